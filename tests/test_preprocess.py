"""Preprocessing for the shipped models, and the drawing pad: strokes drawn by code must be read as digits."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import UserError
from engine.vision.preprocess import digit_to_mnist, prepare, prepare_rgb
from tests.conftest import draw_strokes, render_digit

ONE = [[(0.52, 0.15), (0.5, 0.85)]]
SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]
ZERO = [[(0.5, 0.15), (0.7, 0.3), (0.72, 0.65), (0.5, 0.85), (0.3, 0.65), (0.28, 0.3), (0.5, 0.15)]]
FOUR = [[(0.55, 0.15), (0.25, 0.6), (0.75, 0.6)], [(0.6, 0.35), (0.6, 0.88)]]


def test_rgb_preprocessing_crops_to_square_and_normalises():
    image = Image.new("RGB", (300, 120), (255, 0, 0))
    tensor = prepare_rgb(image, 32, [0.5] * 3, [0.5] * 3)
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor[0], torch.ones(32, 32), atol=1e-3) and torch.allclose(tensor[1], -torch.ones(32, 32), atol=1e-3)


def test_digit_is_centred_scaled_and_white_on_black():
    frame = digit_to_mnist(draw_strokes(ONE))
    assert frame.shape == (28, 28)
    assert frame[0].max() == 0 and frame[:, 0].max() == 0  # background black, margin kept
    rows = np.flatnonzero(frame.max(1) > 0.2)
    assert 17 <= rows[-1] - rows[0] + 1 <= 21  # longer side scaled into the 20 px box
    ys, xs = np.indices(frame.shape)
    assert abs((ys * frame).sum() / frame.sum() - 14) < 1.5 and abs((xs * frame).sum() / frame.sum() - 14) < 1.5


def test_thin_strokes_are_thickened_like_mnist():
    thin = digit_to_mnist(draw_strokes(SEVEN, width=2))
    assert (thin > 0.5).sum() > 40  # a 2 px line on a 280 px canvas would vanish without thickening


@pytest.mark.parametrize("empty", [Image.new("RGBA", (280, 280), (0, 0, 0, 0)), Image.new("RGB", (100, 100), "white")])
def test_empty_drawing_is_a_clear_error(empty):
    with pytest.raises(UserError, match="empty"):
        digit_to_mnist(empty)


@pytest.mark.parametrize("digit,strokes", [("1", ONE), ("7", SEVEN), ("0", ZERO), ("4", FOUR)])
@pytest.mark.parametrize("transparent", [True, False])
def test_mnist_reads_digits_drawn_on_the_sketchpad(shipped_mnist, digit, strokes, transparent):
    result = shipped_mnist.classify(draw_strokes(strokes, transparent=transparent))
    assert next(iter(result["top"])) == digit, result["top"]


def test_mnist_reads_most_typeset_digits(shipped_mnist):
    """Printed digits are not MNIST's handwriting, but a digit model should still read most of them."""
    predictions = {d: next(iter(shipped_mnist.classify(render_digit(d, stroke=2, rotate=5))["top"])) for d in "0123456789"}
    correct = sum(digit == guess for digit, guess in predictions.items())
    assert correct >= 8, predictions


def test_card_preprocessing_is_followed(shipped_mnist):
    tensor = prepare(render_digit("3"), shipped_mnist.preprocessing)
    assert tensor.shape == (1, 28, 28)

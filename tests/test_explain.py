import numpy as np
from PIL import Image

from engine.vision.classify import ShippedClassifier
from engine.vision.explain import first_layer_filters, grad_cam, overlay, stage_activations


def test_grad_cam_has_the_input_shape_and_unit_range(tiny_image_model):
    classifier = ShippedClassifier(tiny_image_model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    result = classifier.classify(image)
    heat = grad_cam(classifier, result["input"], result["class_index"])
    assert heat.shape == (32, 32)
    assert heat.min() >= 0 and abs(heat.max() - 1) < 1e-6
    assert overlay(image, heat, size=128).size == (128, 128)


def test_grad_cam_points_at_the_digit(shipped_mnist):
    from tests.conftest import render_digit

    result = shipped_mnist.classify(render_digit("1"))
    heat = grad_cam(shipped_mnist, result["input"], result["class_index"])
    assert heat[:, 10:18].mean() > heat[:, :4].mean()  # the evidence for "1" sits in the middle columns


def test_look_inside_pictures(tiny_image_model):
    classifier = ShippedClassifier(tiny_image_model)
    filters = first_layer_filters(classifier.model)
    assert filters.mode == "RGB" and filters.width > 32
    result = classifier.classify(Image.new("RGB", (32, 32), "red"))
    maps = stage_activations(classifier.model, result["input"])
    assert len(maps) == 4  # stem + 3 stages
    assert all(isinstance(picture, Image.Image) and caption for picture, caption in maps)


def test_grad_cam_is_safe_while_other_threads_use_the_model(tiny_image_model):
    """Many users share one loaded model: explanations in several threads at once, interleaved with plain
    predictions and activation maps, give the same heatmaps as one at a time and never fail."""
    from concurrent.futures import ThreadPoolExecutor

    classifier = ShippedClassifier(tiny_image_model)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    inputs = [classifier.classify(image) for image in images]
    alone = [grad_cam(classifier, r["input"], r["class_index"]) for r in inputs]

    def explain(index: int):
        result = inputs[index % len(inputs)]
        if index % 3 == 0:
            stage_activations(classifier.model, result["input"])
            return None
        if index % 3 == 1:
            classifier.classify(images[index % len(images)])
            return None
        return index % len(inputs), grad_cam(classifier, result["input"], result["class_index"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        together = [r for r in pool.map(explain, range(120)) if r is not None]
    assert len(together) == 40
    for index, heat in together:
        assert np.allclose(heat, alone[index], atol=1e-5)
    assert all(p.grad is None for p in classifier.model.parameters())  # the shared weights were never written to

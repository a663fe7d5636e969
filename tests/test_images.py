"""engine/images.py: every kind of image a user may upload opens as an upright 8-bit RGB(A) PIL image,
and everything that is not a usable image is refused with a UserError that says why.

Every file is made here, in tmp_path; nothing comes from ../shared or the network."""
from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.images import MAX_PIXELS, load_image


def noisy_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Random pixels compress badly, so the file is big enough to cut in half meaningfully."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming width x height 8-bit grey pixels, with a tiny IDAT.
    Opening it reads only the header, so nothing of that size is ever allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, colour type 0 (grey), no interlace
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + png_chunk(b"IEND", b""))


def pixel(image: Image.Image, xy=(0, 0)) -> tuple:
    return tuple(image.getpixel(xy))


def close(a, b, tolerance: int = 6) -> bool:
    return len(a) == len(b) and all(abs(int(x) - int(y)) <= tolerance for x, y in zip(a, b))


# --- refused inputs -------------------------------------------------------------------------------------


def test_text_saved_as_png_is_refused(tmp_path: Path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"this is a shopping list, not a picture\n" * 20)
    with pytest.raises(UserError, match=r"notes\.png is not an image that can be read"):
        load_image(path)


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file_is_refused(tmp_path: Path, fmt: str, suffix: str):
    whole = io.BytesIO()
    noisy_rgb().save(whole, fmt)
    data = whole.getvalue()
    assert load_image(data).size == (64, 48)  # the complete file is fine
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"cut\{suffix} is damaged or truncated"):
        load_image(path)


def test_decompression_bomb_is_refused_quickly_and_without_allocating(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(crafted_png(30_000, 30_000))
    assert len(path.read_bytes()) < 2_000  # a tiny file ...
    with pytest.MonkeyPatch.context() as patch:  # the header is valid: with no limit, PIL reads the size
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as header_only:
            assert header_only.size == (30_000, 30_000) and header_only.mode == "L"
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb\.png .*too large.*40 megapixels") as caught:  # ... claiming 900 MP
        load_image(path)
    assert time.perf_counter() - started < 2.0, "the size must be refused from the header, before decoding"
    assert "megapixels" in str(caught.value)


def test_image_between_the_limit_and_twice_the_limit_is_refused_too(tmp_path: Path):
    """PIL only warns (not raises) below 2 x MAX_IMAGE_PIXELS; load_image must still refuse it."""
    width, height = 10_000, 5_000  # 50 MP: over 40 MP, under 80 MP
    assert MAX_PIXELS < width * height < 2 * MAX_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(crafted_png(width, height))
    with pytest.raises(UserError, match=r"big\.png .*megapixels"):
        load_image(path)


def test_none_is_refused():
    with pytest.raises(UserError, match="No image given"):
        load_image(None)


def test_missing_path_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match=r"nowhere\.jpg was not found"):
        load_image(tmp_path / "nowhere.jpg")
    with pytest.raises(UserError, match=r"nowhere\.jpg was not found"):
        load_image(str(tmp_path / "nowhere.jpg"))


@pytest.mark.parametrize("array", [np.zeros((0, 0, 3), np.uint8), np.zeros((0,), np.uint8),
                                   np.zeros((4, 0), np.float32)], ids=["0x0x3", "1d-empty", "4x0"])
def test_empty_array_is_refused(array: np.ndarray):
    with pytest.raises(UserError, match="empty"):
        load_image(array)


def test_array_with_wrong_channel_count_is_refused():
    with pytest.raises(UserError, match="5 channels"):
        load_image(np.zeros((4, 4, 5), np.uint8))


# --- modes and formats ----------------------------------------------------------------------------------


def test_16bit_grey_keeps_its_contrast(tmp_path: Path):
    # A typical 16-bit scan: all values far above 255 and close together. A naive cast would give one flat colour.
    values = np.array([[1000, 1000, 2000, 2000],
                       [1000, 1000, 2000, 2000],
                       [1500, 1500, 1500, 1500]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    path = tmp_path / "scan16.png"
    source.save(path)
    for given in (source, path):
        image = load_image(given)
        assert image.mode == "RGB" and image.size == (4, 3)
        grey = np.asarray(image)[:, :, 0].astype(int)
        assert grey[0, 0] <= 5 and grey[0, 3] >= 250, grey  # darkest -> black, brightest -> white
        assert 100 <= grey[2, 0] <= 155, grey  # the middle value stays in the middle
        assert (np.asarray(image)[:, :, 0] == np.asarray(image)[:, :, 2]).all()  # still grey


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    assert close(pixel(image, (8, 8)), (255, 0, 0), tolerance=12), pixel(image, (8, 8))


def rgba_sample() -> Image.Image:
    """Left half fully transparent, right half opaque blue, one half-transparent red pixel."""
    image = Image.new("RGBA", (8, 4), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (4, 0, 8, 4))
    image.putpixel((0, 0), (255, 0, 0, 128))
    return image


def test_rgba_is_composited_on_white(tmp_path: Path):
    path = tmp_path / "sticker.png"
    rgba_sample().save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert pixel(image, (2, 2)) == (255, 255, 255)  # transparent -> white, not black
    assert pixel(image, (6, 2)) == (0, 0, 255)
    assert close(pixel(image, (0, 0)), (255, 127, 127), tolerance=2)  # half red over white = pink


def test_rgba_kept_with_keep_alpha(tmp_path: Path):
    path = tmp_path / "sticker.png"
    rgba_sample().save(path)
    image = load_image(path, keep_alpha=True)
    assert image.mode == "RGBA"
    assert pixel(image, (2, 2))[3] == 0
    assert pixel(image, (6, 2)) == (0, 0, 255, 255)
    assert pixel(image, (0, 0)) == (255, 0, 0, 128)


def palette_image() -> Image.Image:
    image = Image.new("P", (6, 2), 0)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 160, 0] + [0] * (256 - 3) * 3)
    image.paste(1, (2, 0, 4, 2))  # red in the middle
    image.paste(2, (4, 0, 6, 2))  # green on the right
    return image


def test_palette_without_transparency(tmp_path: Path):
    path = tmp_path / "palette.png"
    palette_image().save(path)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" not in raw.info
    for keep_alpha in (False, True):
        image = load_image(path, keep_alpha=keep_alpha)
        assert image.mode == "RGB"  # no transparency to keep
        assert [pixel(image, (x, 0)) for x in (0, 2, 4)] == [(0, 0, 0), (255, 0, 0), (0, 160, 0)]


def test_palette_with_transparency(tmp_path: Path):
    path = tmp_path / "palette-transparent.png"
    palette_image().save(path, transparency=0)  # index 0 (black) is transparent
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    image = load_image(path)
    assert image.mode == "RGB"
    assert [pixel(image, (x, 0)) for x in (0, 2, 4)] == [(255, 255, 255), (255, 0, 0), (0, 160, 0)]
    kept = load_image(path, keep_alpha=True)
    assert kept.mode == "RGBA"
    assert pixel(kept, (0, 0))[3] == 0 and pixel(kept, (2, 0)) == (255, 0, 0, 255)


def test_grey_l_becomes_rgb(tmp_path: Path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 3), 77).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 3)
    assert pixel(image, (4, 2)) == (77, 77, 77)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path):
    source = Image.new("RGB", (40, 20), (200, 30, 30))
    source.paste((30, 30, 200), (0, 0, 10, 20))  # a blue band on the left edge
    exif = source.getexif()
    exif[274] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    source.save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20) and raw.getexif().get(274) == 6
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (20, 40)  # width and height swapped
    # rotated clockwise, the left edge becomes the top edge
    assert close(pixel(image, (10, 2)), (30, 30, 200), tolerance=40), pixel(image, (10, 2))
    assert close(pixel(image, (10, 37)), (200, 30, 30), tolerance=40), pixel(image, (10, 37))


def test_animated_gif_gives_its_first_frame(tmp_path: Path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (10, 10), colour) for colour in colours]
    path = tmp_path / "blink.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
        raw.seek(2)  # leave the file positioned on the last frame: load_image must still go back to the first
        image = load_image(raw)
    assert image.mode == "RGB" and image.size == (10, 10)
    assert pixel(image, (5, 5)) == (255, 0, 0)
    assert pixel(load_image(path), (5, 5)) == (255, 0, 0)


# --- other kinds of source ------------------------------------------------------------------------------


def test_numpy_uint8_rgb():
    array = np.zeros((5, 7, 3), np.uint8)
    array[..., 1] = 200
    array[0, 0] = (1, 2, 3)
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (7, 5)  # PIL size is (width, height)
    assert pixel(image, (0, 0)) == (1, 2, 3) and pixel(image, (6, 4)) == (0, 200, 0)


def test_numpy_float_in_unit_range_is_scaled_to_8bit():
    array = np.full((4, 4, 3), 0.5, np.float32)
    array[0, 0] = (0.0, 1.0, 0.25)
    image = load_image(array)
    assert image.mode == "RGB"
    assert close(pixel(image, (0, 0)), (0, 255, 64), tolerance=1)
    assert close(pixel(image, (3, 3)), (127, 127, 127), tolerance=1)


def test_numpy_single_channel():
    array = np.full((3, 6, 1), 90, np.uint8)
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (6, 3)
    assert pixel(image, (5, 2)) == (90, 90, 90)


def test_numpy_rgba_respects_keep_alpha():
    array = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    assert pixel(load_image(array), (0, 0)) == (255, 255, 255)
    assert pixel(load_image(array, keep_alpha=True), (0, 0)) == (0, 0, 0, 0)


def test_bytes_and_bytearray():
    buffer = io.BytesIO()
    Image.new("RGB", (9, 4), (12, 34, 56)).save(buffer, "PNG")
    for data in (buffer.getvalue(), bytearray(buffer.getvalue())):
        image = load_image(data)
        assert image.mode == "RGB" and image.size == (9, 4)
        assert pixel(image, (8, 3)) == (12, 34, 56)


def test_bytes_that_are_not_an_image_are_refused():
    with pytest.raises(UserError, match="not an image that can be read"):
        load_image(b"GIF89a but not really")


def test_result_is_fully_loaded_after_the_file_is_gone(tmp_path: Path):
    path = tmp_path / "gone.png"
    noisy_rgb(16, 16).save(path)
    expected = np.asarray(noisy_rgb(16, 16))
    image = load_image(path)
    path.unlink()
    assert np.array_equal(np.asarray(image), expected)


def test_uint16_array_keeps_its_contrast():
    image = load_image(np.array([[1000, 2000], [1500, 1000]], dtype=np.uint16))
    values = np.asarray(image.convert("L"))
    assert values.min() == 0 and values.max() == 255

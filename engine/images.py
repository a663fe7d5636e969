"""Open any image a user hands us, safely, as an 8-bit RGB (or RGBA) PIL image.

Handles what real uploads contain: EXIF rotation, 16-bit and float greys, CMYK, palettes, transparency,
animated GIFs (first frame), and refuses decompression bombs, truncated files and non-images with a
clear UserError instead of a traceback.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError

MAX_PIXELS = 40_000_000  # 40 megapixels: a large phone photo is 12-50 MP; a 30,000 x 30,000 PNG is 900 MP.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return "the image"


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images -> 8-bit grey, stretched to their actual range."""
    array = np.asarray(image, dtype=np.float64)
    finite = array[np.isfinite(array)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    scaled = np.clip((np.nan_to_num(array, nan=low) - low) / (high - low) * 255.0, 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def normalise_mode(image: Image.Image, keep_alpha: bool = False) -> Image.Image:
    """Any PIL mode -> 'RGB' (or 'RGBA' when keep_alpha and the image has transparency).
    Transparent pixels are composited on white, the way a browser shows them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        if keep_alpha:
            return image
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return image


def load_image(source, keep_alpha: bool = False, draft: int | None = None) -> Image.Image:
    """Open a path, bytes, a numpy array or a PIL image; return a fully loaded, upright RGB(A) image.
    `draft`: a JPEG may be decoded at a reduced scale whose sides stay at least this many pixels (much faster
    for big photos that will be shrunk anyway)."""
    name = _describe(source)
    if source is None:
        raise UserError("No image given: upload, paste or draw one first.")
    if isinstance(source, np.ndarray):
        return _from_array(source, keep_alpha)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if isinstance(source, Image.Image):
                image = source
            else:
                image = Image.open(source)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UserError(f"{name} is {width} x {height} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels.")
            if width == 0 or height == 0:
                raise UserError(f"{name} has no pixels.")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/WebP/APNG: classify the first frame
            if draft and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image.load()
            image = ImageOps.exif_transpose(image)
        except UserError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            found = re.search(r"\((\d+) pixels\)", str(error))
            size = f" ({int(found[1]) / 1e6:,.0f} megapixels)" if found else ""
            raise UserError(f"{name} is too large to open safely{size}; the limit is "
                            f"{MAX_PIXELS // 1_000_000} megapixels.") from error
        except UnidentifiedImageError as error:
            raise UserError(f"{name} is not an image that can be read (PNG, JPEG, GIF, WebP, BMP, TIFF...).") from error
        except FileNotFoundError as error:
            raise UserError(f"{name} was not found.") from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise UserError(f"{name} is damaged or truncated and cannot be decoded ({error}).") from error
    return normalise_mode(image, keep_alpha)


def _from_array(array: np.ndarray, keep_alpha: bool) -> Image.Image:
    if array.size == 0 or array.ndim not in (2, 3):
        raise UserError("The image is empty or has an unexpected shape.")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise UserError(f"The image has {array.shape[2]} channels; expected 1, 3 or 4.")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise UserError(f"The image is larger than {MAX_PIXELS // 1_000_000} megapixels.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and array.size and np.nanmax(array) <= 1.0:
            array = np.nan_to_num(array) * 255.0
        elif array.ndim == 2:
            return normalise_mode(_to_8bit(array), keep_alpha)  # 16-bit/int/float grey: stretch like I;16
        elif array.dtype == np.uint16:
            array = array / 257.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    return normalise_mode(Image.fromarray(array), keep_alpha)

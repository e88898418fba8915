"""Reading images the way users have them: paths, PIL images or arrays → RGB PIL images.

Handles EXIF orientation, grayscale, palette, alpha (composited on white), 16-bit and CMYK
images. Every failure a user can cause (missing, empty, truncated, not an image, too large)
raises :class:`~attendseg.errors.AttendsegError` naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AttendsegError

#: File suffixes treated as images when scanning folders.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Images with more pixels than this are refused before decoding (PIL's own default limit).
MAX_PIXELS = 178_956_970


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, EXIF orientation applied. Alpha is composited on white;
    16-bit data are divided by 257; 32-bit/float data outside 0–255 are stretched min–max."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):  # full 16-bit range → 8 bit
        array = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):  # 32-bit data: keep 0–255 data, else stretch min–max
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(source) -> Image.Image:
    """A path, PIL image or ``[H, W]`` / ``[H, W, 3|4]`` uint8 array → RGB ``PIL.Image``."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, Path)):
        return _from_path(Path(source))
    raise AttendsegError(f"not an image: expected a path, a PIL image or an array, got {type(source).__name__}")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise AttendsegError(f"not an image array: shape {array.shape} (expected H×W, H×W×3 or H×W×4)")
    if array.size == 0:
        raise AttendsegError(f"empty image array: shape {array.shape}")
    if array.dtype == np.uint16:  # full 16-bit range → 8 bit, as for 16-bit files
        array = (array / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            array = array * 255
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return to_rgb(Image.fromarray(array))


def _from_path(path: Path) -> Image.Image:
    if not path.exists():
        raise AttendsegError(f"{path}: no such file")
    if path.is_dir():
        raise AttendsegError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise AttendsegError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise AttendsegError(
                    f"{path}: image too large ({width}×{height} = {width * height:,} pixels; "
                    f"limit {MAX_PIXELS:,})"
                )
            image.load()
            return to_rgb(image)
    except AttendsegError:
        raise
    except UnidentifiedImageError:
        raise AttendsegError(f"{path}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise AttendsegError(f"{path}: image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise AttendsegError(f"{path}: unreadable or truncated image ({error})") from None

"""Decode untrusted image bytes safely into RGB arrays."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit, before decoding, in decode()


class ImageRejected(ValueError):
    """The bytes are not an image we will decode (type, size, or broken)."""


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes → HWC uint8 RGB. EXIF orientation applied; CMYK, palette, 16-bit, grayscale and alpha
    (composited on white) handled; animated formats give their first frame. The pixel count is
    checked from the header before any pixel is decoded."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        w, h = im.size
        if w * h > max_pixels:
            raise ImageRejected(f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        im.seek(0)
        im.load()
        return _to_rgb(im)
    except ImageRejected:
        raise
    except Exception as e:  # PIL raises many types for bad data (a broken EXIF block too)
        # PIL names the in-memory file it was given ("<_io.BytesIO object at 0x7f...>"): an address
        # that differs on every run and tells a reader nothing
        said = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
        raise ImageRejected(f"cannot decode image: {type(e).__name__}: {said}") from e


def _to_rgb(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        hi = arr.max() or 1.0
        im = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        im = bg
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg_bytes(arr_or_img, quality: int = 85) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()

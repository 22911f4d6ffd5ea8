"""Decoding untrusted bytes: every odd-but-valid image decodes to RGB; bad bytes are rejected."""
import io

import numpy as np
import pytest
from PIL import Image

from logoscan.images import ImageRejected, decode


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("L", "PNG"),
                                      ("I;16", "PNG"), ("LA", "PNG"), ("1", "PNG")])
def test_modes_decode_to_rgb(mode, fmt):
    im = Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode)
    arr = decode(_bytes(im, fmt), 10**7)
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8


def test_alpha_is_composited_on_white():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode(_bytes(im, "PNG"), 10**7).min() == 255


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    arr = decode(_bytes(im, "JPEG", exif=exif), 10**7)
    assert arr.shape[:2] == (40, 20)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(data, 10**7)[0, 0, 0] > 200


def test_decompression_bomb_rejected_before_decoding():
    data = _bytes(Image.new("1", (20000, 20000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageRejected, match="20000x20000"):
        decode(data, 50_000_000)


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"<html>nope</html>", "cannot decode"),
                                        (b"%PDF-1.4 ...", "cannot decode")])
def test_not_images_rejected(data, match):
    with pytest.raises(ImageRejected, match=match) as e:
        decode(data, 10**7)
    # the same bytes give the same error row on every run: no memory address of PIL's file object
    assert "0x" not in str(e.value) and "BytesIO" not in str(e.value)


def test_truncated_jpeg_rejected():
    data = _bytes(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageRejected):
        decode(data[: len(data) // 3], 10**7)

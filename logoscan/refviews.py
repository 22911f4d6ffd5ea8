"""Gallery-side views of a clean reference: the ways a logo drawn in colour on white is seen on
products and in photos (white on a dark ground, one ink, a moulded metal badge). A reference can
be stored as several vectors, all mapping to its ``logo_id``; the matcher takes the nearest.

Each view is made from the reference crop alone (an RGB image, the logo on a light ground, as
`gallery.load_reference_crops` cuts it): the background is the near-white pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

VIEWS = ("clean", "inverted", "dark_ground", "mono_dark", "mono_light", "chrome")
DEFAULT_VIEWS = ("clean",)  # what `gallery build` stores unless told (docs/bench/embedder.md measures both)


def _mask(arr: np.ndarray) -> np.ndarray:
    """True where the logo is drawn (not the near-white ground)."""
    return arr.min(axis=2) < 235


def reference_views(crop: Image.Image, views=VIEWS) -> list[Image.Image]:
    """``crop`` (RGB, the logo on white) seen as each of ``views``, in that order."""
    arr = np.asarray(crop.convert("RGB"), np.float32)
    ink = _mask(arr)[..., None]
    lum = (arr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    out = []
    for v in views:
        if v == "clean":
            a = arr
        elif v == "inverted":
            a = 255 - arr
        elif v == "dark_ground":
            a = np.where(ink, arr, 35.0)
        elif v == "mono_dark":
            a = np.where(ink, 30.0, 255.0) * np.ones(3, np.float32)
        elif v == "mono_light":
            a = np.where(ink, 225.0, 40.0) * np.ones(3, np.float32)
        elif v == "chrome":
            m = Image.fromarray((ink[..., 0] * 255).astype(np.uint8))
            relief = np.asarray(m.filter(ImageFilter.EMBOSS), np.float32)[..., None] - 128.0
            a = np.where(ink, 120 + lum * 0.35 + relief * 1.5, 90.0) * np.ones(3, np.float32)
        else:
            raise ValueError(f"unknown reference view {v!r}; known: {', '.join(VIEWS)}")
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out

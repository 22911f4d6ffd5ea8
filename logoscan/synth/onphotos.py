"""Logos composited onto real labelled photographs, printed the way photographs show them.

The background is a real training photo (a store front, a car) whose own logo boxes are kept as
truth; one to three synthetic logos are planted where they overlap none of them. On top of
`scenes.plant(hard=True)`'s perspective, curvature, faint print and occlusion, each planted logo
may get what a camera sees on a printed or moulded mark:

- ``shade``: the background's own light (its blurred luminance under the logo) multiplies the
  logo, so a logo on a shadowed wall is dark where the wall is;
- ``gradient``: a linear lighting gradient across the logo;
- ``emboss``: a relief with a specular edge, like a moulded or chrome badge.

Deterministic given the ``random.Random``. Training only.
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

from logoscan.synth.marks import Mark, render
from logoscan.synth.scenes import Planted, colourway, curve, ensure_contrast, fits, perspective, visible_box

PHOTO_EFFECTS = (("perspective", 0.35), ("curve", 0.15), ("shade", 0.6), ("gradient", 0.3),
                 ("emboss", 0.15), ("faint", 0.15))


def _shade(piece: Image.Image, under: Image.Image, strength: float) -> Image.Image:
    """Multiply the logo's colour by the background's local light, normalised to its mean."""
    lum = np.asarray(under.convert("L").filter(ImageFilter.GaussianBlur(max(2, under.width // 8))),
                     np.float32)
    f = np.clip(lum / max(float(lum.mean()), 1.0), 0.5, 1.5) ** strength
    rgb = np.asarray(piece.convert("RGB"), np.float32) * f[..., None]
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    out.putalpha(piece.getchannel("A"))
    return out


def _gradient(rng: random.Random, piece: Image.Image) -> Image.Image:
    w, h = piece.size
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(a) * xx / max(w, 1) + np.sin(a) * yy / max(h, 1))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    lo, hi = rng.uniform(0.45, 0.85), rng.uniform(1.0, 1.35)
    rgb = np.asarray(piece.convert("RGB"), np.float32) * (lo + (hi - lo) * t)[..., None]
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    out.putalpha(piece.getchannel("A"))
    return out


def _emboss(rng: random.Random, piece: Image.Image) -> Image.Image:
    """A moulded/chrome look: a grey metal tone, the relief of the alpha edge, a specular rim."""
    alpha = piece.getchannel("A")
    relief = np.asarray(alpha.filter(ImageFilter.EMBOSS), np.float32) - 128.0
    base = np.asarray(piece.convert("L"), np.float32) * rng.uniform(0.2, 0.6) + rng.uniform(90, 170)
    grey = np.clip(base + relief * rng.uniform(1.0, 2.5), 0, 255)
    tint = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], np.float32)
    out = Image.fromarray(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8))
    out.putalpha(alpha)
    return out


def plant_on_photo(rng: random.Random, im: Image.Image, mark: Mark, size: int, taken: list,
                   max_rot: float = 15.0) -> Planted | None:
    """Paste ``mark`` onto the photo ``im`` (in place) away from the boxes in ``taken``."""
    logo = render(mark, size)
    w, h = im.size
    for _ in range(20):
        lw, lh = logo.size
        if w < lw + 4 or h < lh + 4:
            return None
        x, y = rng.randint(0, w - lw), rng.randint(0, h - lh)
        under_c = im.getpixel((x + lw // 2, y + lh // 2))
        effects = tuple(e for e, p in PHOTO_EFFECTS if rng.random() < p)
        piece = logo if "emboss" in effects else ensure_contrast(colourway(rng, logo, under_c), under_c)
        rot = rng.uniform(-max_rot, max_rot)
        if abs(rot) > 0.5:
            piece = piece.rotate(rot, resample=Image.BICUBIC, expand=True)
        if "perspective" in effects:
            piece = perspective(rng, piece, strength=0.3)
        if "curve" in effects:
            piece = curve(rng, piece)
        if "emboss" in effects:
            piece = _emboss(rng, piece)
        box = visible_box(piece, x, y)
        if box is None:
            return None
        if not fits(box, w, h, taken):
            continue
        if "shade" in effects:
            piece = _shade(piece, im.crop((x, y, x + piece.width, y + piece.height)), rng.uniform(0.5, 1.0))
        if "gradient" in effects:
            piece = _gradient(rng, piece)
        if "faint" in effects:
            piece.putalpha(piece.getchannel("A").point(lambda v, k=rng.uniform(0.45, 0.7): int(v * k)))
        im.paste(piece, (x, y), piece)
        taken.append(box)
        return Planted(tuple(float(v) for v in box), mark.key, effects)
    return None


def scene_on_photo(rng: random.Random, photo: Image.Image, boxes: np.ndarray, marks: list[Mark],
                   logo_frac=(0.05, 0.35)) -> tuple[Image.Image, np.ndarray, list[Planted]]:
    """(image, all true boxes: the photo's own then the planted ones, the planted records)."""
    im = photo.convert("RGB").copy()
    taken = [tuple(float(v) for v in b) for b in boxes]
    side = max(im.size)
    planted = []
    for mark in marks:
        s = int(round(np.exp(rng.uniform(np.log(max(12, logo_frac[0] * side)), np.log(logo_frac[1] * side)))))
        p = plant_on_photo(rng, im, mark, s, taken)
        if p:
            planted.append(p)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    allb = np.array([*(list(b) for b in boxes), *(list(p.box) for p in planted)], np.float32).reshape(-1, 4)
    return im, allb, planted

"""A clean logo as a camera sees it on a product: small, moulded or printed, at an angle, in poor
light. The embedder's photo-like synthetic views (training only).

``photo_view`` takes a clean RGBA logo and a real photograph to put it on and returns a square
crop, cut like a detection, of the logo rendered as one of:

- ``chrome``: a moulded metal badge (grey tone, relief of the logo's edges, specular rim);
- ``mono``: one ink, dark or light, as on fabric, packaging or a painted grille;
- ``original``: the logo's own colours, printed;

then seen under strong perspective, with the photo's own light on it (``shade``), a lighting
gradient, glare, low light with sensor noise, motion or focus blur, the contrast equalisation
many photo sets apply, and JPEG. The logo is usually small (16–90 px across before the crop is
resized to the embedder's input), as badges and marks are in catalogue and street photos.
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from logoscan.synth.crops import jittered_crop, jpeg
from logoscan.synth.onphotos import _emboss, _gradient, _shade
from logoscan.synth.scenes import _lum, mono_alpha, perspective, visible_box

STYLES = (("chrome", 0.4), ("mono", 0.3), ("original", 0.3))


def _mono(rng: random.Random, logo: Image.Image, under_lum: float) -> Image.Image:
    dark = under_lum > 110 if rng.random() < 0.8 else under_lum <= 110
    v = rng.randint(10, 70) if dark else rng.randint(190, 250)
    out = Image.new("RGBA", logo.size, (v, v, v, 255))
    out.putalpha(mono_alpha(logo) if rng.random() < 0.5 else logo.getchannel("A"))
    return out


def _glare(rng: random.Random, im: Image.Image) -> Image.Image:
    w, h = im.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.1, 0.4) * max(w, h)
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(50, 130)
    return Image.fromarray(np.clip(np.asarray(im, np.float32) + g, 0, 255).astype(np.uint8))


def _low_light(rng: random.Random, im: Image.Image, nrng: np.random.Generator) -> Image.Image:
    arr = np.asarray(im, np.float32) * rng.uniform(0.35, 0.7)
    arr += nrng.normal(0, rng.uniform(3, 12), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _motion_blur(rng: random.Random, im: Image.Image) -> Image.Image:
    k = np.zeros((5, 5), np.float32)
    if rng.random() < 0.5:
        k[2, :] = 1
    else:
        k[np.arange(5), np.arange(5)] = 1
    if rng.random() < 0.5:
        k = k.T
    return im.filter(ImageFilter.Kernel((5, 5), k.ravel().tolist(), scale=float(k.sum())))


def _plate(rng: random.Random, piece: Image.Image) -> Image.Image:
    """An oval or rounded plate behind the logo, as many car and product badges have."""
    m = max(piece.size) // 6 + 2
    plate = Image.new("RGBA", (piece.width + 2 * m, piece.height + 2 * m), (0, 0, 0, 0))
    v = rng.choice((rng.randint(10, 60), rng.randint(150, 230)))
    shape = ImageDraw.Draw(plate)
    box = [0, 0, plate.width - 1, plate.height - 1]
    (shape.ellipse if rng.random() < 0.5 else shape.rounded_rectangle)(box, fill=(v, v, v, 255))
    plate.alpha_composite(piece, (m, m))
    return plate


def photo_view(rng: random.Random, logo: Image.Image, photo: Image.Image, size: int, pad: float,
               logo_px=(16, 90)) -> Image.Image:
    """A detection-like crop (``size`` square) of ``logo`` (RGBA, trimmed) put on ``photo``."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    side = int(round(np.exp(rng.uniform(np.log(logo_px[0]), np.log(logo_px[1])))))
    scale = side / max(logo.size)
    piece = logo.resize((max(int(logo.width * scale), 2), max(int(logo.height * scale), 2)), Image.LANCZOS)
    # background: a patch of the photo about three times the logo's size
    bw = min(photo.width, photo.height, max(side * 3, 48))
    bx, by = rng.randint(0, photo.width - bw), rng.randint(0, photo.height - bw)
    bg = photo.crop((bx, by, bx + bw, by + bw)).convert("RGB")
    if bw < side * 2:
        bg = bg.resize((side * 3, side * 3), Image.BILINEAR)
    under_lum = _lum(np.asarray(bg, np.float32).reshape(-1, 3).mean(0))
    style = rng.choices([s for s, _ in STYLES], weights=[p for _, p in STYLES])[0]
    if style == "mono":
        piece = _mono(rng, piece, under_lum)
    if rng.random() < 0.15:
        piece = _plate(rng, piece)
    rot = rng.uniform(-12, 12)
    if abs(rot) > 0.5:
        piece = piece.rotate(rot, resample=Image.BICUBIC, expand=True)
    if rng.random() < 0.6:
        piece = perspective(rng, piece, strength=rng.uniform(0.1, 0.35))
    if style == "chrome":
        piece = _emboss(rng, piece)
    x = (bg.width - piece.width) // 2 + rng.randint(-side // 6, side // 6)
    y = (bg.height - piece.height) // 2 + rng.randint(-side // 6, side // 6)
    x, y = min(max(x, 0), max(bg.width - piece.width, 0)), min(max(y, 0), max(bg.height - piece.height, 0))
    if rng.random() < 0.5:
        piece = _shade(piece, bg.crop((x, y, x + piece.width, y + piece.height)), rng.uniform(0.5, 1.0))
    if rng.random() < 0.3:
        piece = _gradient(rng, piece)
    box = visible_box(piece, x, y) or (x, y, x + piece.width, y + piece.height)
    bg.paste(piece, (x, y), piece)
    im = bg
    if rng.random() < 0.1:
        im = _glare(rng, im)
    if rng.random() < 0.2:
        im = _low_light(rng, im, nrng)
    if rng.random() < 0.2:
        im = _motion_blur(rng, im)
    elif rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5)))
    if rng.random() < 0.3:
        im = ImageOps.equalize(im)
    crop = jittered_crop(rng, im, box, size, pad)
    return jpeg(rng, crop, (30, 90)) if rng.random() < 0.6 else crop

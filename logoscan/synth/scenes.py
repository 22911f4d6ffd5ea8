"""Product-like scenes with logos planted at random places, scales, rotations and colourways.

Used for the demo catalog, for detector training scenes, and for embedder training crops
(a scene with one logo, cropped by its true box). Deterministic given the ``random.Random``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from logoscan.synth.marks import Mark, _font, fonts, render

_WORDS = ("sugar", "salt", "water", "organic", "flour", "cocoa", "net", "wt", "500g", "1L", "best",
          "before", "ingredients", "natural", "fresh", "new", "size", "cotton", "made", "in",
          "recipe", "original", "light", "extra", "premium", "classic", "vitamin", "protein")


@dataclass
class Planted:
    box: tuple[float, float, float, float]
    key: str
    effects: tuple[str, ...] = ()


def _lum(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _rand_color(rng: random.Random, light: bool | None = None):
    c = tuple(rng.randrange(256) for _ in range(3))
    if light is True:
        c = tuple(150 + v * 105 // 255 for v in c)
    elif light is False:
        c = tuple(v * 110 // 255 for v in c)
    return c


def background(rng: random.Random, w: int, h: int) -> Image.Image:
    style = rng.choice(("solid", "gradient", "noise", "stripes"))
    if style == "solid":
        return Image.new("RGB", (w, h), _rand_color(rng, light=rng.random() < 0.7))
    if style == "gradient":
        a, b = np.array(_rand_color(rng)), np.array(_rand_color(rng))
        t = np.linspace(0, 1, h)[:, None, None]
        arr = (a * (1 - t) + b * t).astype(np.uint8)
        return Image.fromarray(np.broadcast_to(arr, (h, w, 3)).copy())
    if style == "noise":
        small = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h // 16 + 1, w // 16 + 1, 3))
        base = np.array(_rand_color(rng))
        arr = np.clip(base * 0.6 + small * 0.4, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    im = Image.new("RGB", (w, h), _rand_color(rng))
    d = ImageDraw.Draw(im)
    c2, step = _rand_color(rng), rng.randint(8, 40)
    for x in range(-h, w, step * 2):
        d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=c2)
    return im


def product(rng: random.Random, im: Image.Image) -> tuple[int, int, int, int]:
    """Draw a product (box, bottle, garment, label) and return its face rectangle."""
    w, h = im.size
    d = ImageDraw.Draw(im)
    kind = rng.choice(("box", "bottle", "garment", "label"))
    col = _rand_color(rng)
    pw, ph = int(w * rng.uniform(0.5, 0.85)), int(h * rng.uniform(0.55, 0.9))
    x0, y0 = (w - pw) // 2 + rng.randint(-w // 12, w // 12), (h - ph) // 2 + rng.randint(-h // 12, h // 12)
    face = (x0, y0, x0 + pw, y0 + ph)
    if kind == "box":
        side = int(pw * 0.15)
        dark = tuple(int(v * 0.7) for v in col)
        d.polygon([(x0 + pw, y0), (x0 + pw + side, y0 - side // 2), (x0 + pw + side, y0 + ph - side // 2),
                   (x0 + pw, y0 + ph)], fill=dark)
        d.rectangle(face, fill=col)
    elif kind == "bottle":
        neck = pw // 4
        d.rectangle([x0 + pw // 2 - neck // 2, y0 - ph // 6, x0 + pw // 2 + neck // 2, y0 + 10], fill=col)
        d.rounded_rectangle(face, radius=pw // 5, fill=col)
    elif kind == "garment":
        sl = pw // 4
        d.polygon([(x0, y0), (x0 - sl, y0 + sl), (x0, y0 + sl * 2), (x0, y0 + ph), (x0 + pw, y0 + ph),
                   (x0 + pw, y0 + sl * 2), (x0 + pw + sl, y0 + sl), (x0 + pw, y0)], fill=col)
    else:
        d.rounded_rectangle(face, radius=12, fill=col)
    # soft shading so faces are not flat
    if rng.random() < 0.5:
        shade = Image.new("L", im.size, 0)
        ImageDraw.Draw(shade).rectangle([x0, y0, x0 + pw // 3, y0 + ph], fill=40)
        im.paste((0, 0, 0), mask=shade.filter(ImageFilter.GaussianBlur(pw // 8)))
    return face


def clutter(rng: random.Random, im: Image.Image, face, n: int) -> None:
    """Non-logo text and barcodes: things a logo detector must learn to ignore."""
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = face
    for _ in range(n):
        kind = rng.random()
        col = (0, 0, 0) if _lum(im.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))) > 110 else (255, 255, 255)
        x, y = rng.randint(x0, max(x0, x1 - 40)), rng.randint(y0, max(y0, y1 - 20))
        if kind < 0.25:
            bw = rng.randint(30, 80)
            bh = rng.randint(15, 40)
            for k in range(0, bw, 2):
                if rng.random() < 0.6:
                    d.rectangle([x + k, y, x + k + rng.choice((0, 1)), y + bh], fill=(0, 0, 0))
        else:
            if kind < 0.5:
                text = f"${rng.randint(1, 99)}.{rng.randint(0, 99):02d}"
            else:
                text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
            d.text((x, y), text, font=_font(rng.choice(fonts()), rng.randint(8, 18)), fill=col)


def mono_alpha(logo: Image.Image) -> Image.Image:
    """Alpha of a one-ink print of ``logo``: keep its dominant tone, knock the other tones out
    (a white glyph inside a filled emblem stays visible as a hole, as on a real mono print)."""
    arr = np.asarray(logo).astype(np.float32)
    a = arr[..., 3]
    vis = a > 128
    if not vis.any():
        return logo.getchannel("A")
    lum = arr[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    lo, hi = lum[vis].min(), lum[vis].max()
    if hi - lo < 40:
        return logo.getchannel("A")
    mid = (lo + hi) / 2
    dark = lum < mid
    keep = dark if (dark & vis).sum() >= (~dark & vis).sum() else ~dark
    return Image.fromarray((a * keep).astype(np.uint8))


def colourway(rng: random.Random, logo: Image.Image, under) -> Image.Image:
    """Recolour an RGBA logo as it may appear on a product: as designed, mono, or on a badge."""
    style = rng.choices(("original", "mono", "badge"), weights=(0.5, 0.35, 0.15))[0]
    if style == "original":
        return logo
    bg_l = _lum(under)
    dark = bg_l > 128
    col = _rand_color(rng, light=not dark)
    if style == "mono":
        out = Image.new("RGBA", logo.size, col + (255,))
        out.putalpha(mono_alpha(logo))
        return out
    m = max(logo.size) // 8
    badge = Image.new("RGBA", (logo.width + 2 * m, logo.height + 2 * m), (0, 0, 0, 0))
    ImageDraw.Draw(badge).rounded_rectangle([0, 0, badge.width - 1, badge.height - 1], radius=m,
                                            fill=col + (255,))
    ink = Image.new("RGBA", logo.size, ((255, 255, 255) if _lum(col) < 128 else (0, 0, 0)) + (255,))
    ink.putalpha(mono_alpha(logo))
    badge.alpha_composite(ink, (m, m))
    return badge


def ensure_contrast(logo: Image.Image, under) -> Image.Image:
    """If the logo's visible pixels are too close to what is under it, recolour it so it shows."""
    arr = np.asarray(logo)
    vis = arr[..., 3] > 128
    if not vis.any():
        return logo
    mean = arr[vis][:, :3].mean(0)
    if abs(_lum(mean) - _lum(under)) >= 60:
        return logo
    col = (20, 20, 20) if _lum(under) > 128 else (240, 240, 240)
    out = Image.new("RGBA", logo.size, col + (255,))
    out.putalpha(mono_alpha(logo))
    return out


def perspective(rng: random.Random, piece: Image.Image, strength: float = 0.18) -> Image.Image:
    """The logo seen at an angle: its four corners moved by up to ``strength`` of its size."""
    w, h = piece.size
    pad = int(max(w, h) * strength) + 2
    canvas = Image.new("RGBA", (w + 2 * pad, h + 2 * pad), (0, 0, 0, 0))
    canvas.paste(piece, (pad, pad))
    W, H = canvas.size
    src = [(pad, pad), (pad + w, pad), (pad + w, pad + h), (pad, pad + h)]
    dst = [(x + rng.uniform(-1, 1) * strength * w, y + rng.uniform(-1, 1) * strength * h) for x, y in src]
    # coefficients mapping output (dst) pixels back to input (src) pixels
    a = []
    for (X, Y), (x, y) in zip(dst, src):
        a.append([X, Y, 1, 0, 0, 0, -x * X, -x * Y])
        a.append([0, 0, 0, X, Y, 1, -y * X, -y * Y])
    coeffs = np.linalg.solve(np.array(a, np.float64), np.array([c for pt in src for c in pt], np.float64))
    return canvas.transform((W, H), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)


def curve(rng: random.Random, piece: Image.Image, strength: float = 0.15) -> Image.Image:
    """The logo printed on a round surface (a bottle, a can): columns bent along a sine arc."""
    arr = np.asarray(piece)
    h, w = arr.shape[:2]
    amp = max(int(h * rng.uniform(0.05, strength)), 1)
    sign = rng.choice((-1, 1))
    out = np.zeros((h + 2 * amp, w, 4), np.uint8)
    for x in range(w):
        dy = amp + int(round(sign * amp * np.sin(np.pi * x / max(w - 1, 1))))
        out[dy:dy + h, x] = arr[:, x]
    return Image.fromarray(out)


def occlude(rng: random.Random, im: Image.Image, box) -> None:
    """Cover one side of a planted logo (a sticker, a fold, another product): 10–35% of its box."""
    x0, y0, x1, y1 = box
    frac = rng.uniform(0.1, 0.35)
    side = rng.choice(("left", "right", "top", "bottom"))
    if side == "left":
        r = (x0 - 2, y0 - 2, x0 + (x1 - x0) * frac, y1 + 2)
    elif side == "right":
        r = (x1 - (x1 - x0) * frac, y0 - 2, x1 + 2, y1 + 2)
    elif side == "top":
        r = (x0 - 2, y0 - 2, x1 + 2, y0 + (y1 - y0) * frac)
    else:
        r = (x0 - 2, y1 - (y1 - y0) * frac, x1 + 2, y1 + 2)
    ImageDraw.Draw(im).rectangle(r, fill=_rand_color(rng))


def visible_box(piece: Image.Image, x: int, y: int):
    """The box of what ``piece`` shows (alpha > 40) pasted at (x, y); None if it shows nothing."""
    bbox = piece.getchannel("A").point(lambda v: 255 if v > 40 else 0).getbbox()
    return None if bbox is None else (x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3])


def fits(box, w: int, h: int, taken) -> bool:
    """``box`` lies inside a w×h image and touches none of the boxes in ``taken``."""
    if box[2] > w or box[3] > h:
        return False
    return not any(not (box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3]) for t in taken)


def plant(rng: random.Random, im: Image.Image, mark: Mark, size: int, max_rot: float,
          taken: list, region=None, hard: bool = False) -> Planted | None:
    """Paste ``mark`` at a random free place; returns its true box or None if it did not fit.
    ``hard`` adds what real product photos do to logos: perspective, curved surfaces, faint
    (low-contrast) prints and partial occlusion. The true box is the whole logo's extent."""
    logo = render(mark, size)
    w, h = im.size
    for _ in range(20):
        rot = rng.uniform(-max_rot, max_rot)
        x0, y0, x1, y1 = region or (0, 0, w, h)
        lw, lh = logo.size
        if x1 - x0 < lw + 4 or y1 - y0 < lh + 4:
            x0, y0, x1, y1 = 0, 0, w, h
        if w < lw + 4 or h < lh + 4:
            return None
        x = rng.randint(x0, max(x0, x1 - lw))
        y = rng.randint(y0, max(y0, y1 - lh))
        under = im.getpixel((min(x + lw // 2, w - 1), min(y + lh // 2, h - 1)))
        piece = ensure_contrast(colourway(rng, logo, under), under)
        if abs(rot) > 0.5:
            piece = piece.rotate(rot, resample=Image.BICUBIC, expand=True)
        effects = ()
        if hard:
            effects = tuple(e for e, p in (("perspective", 0.3), ("curve", 0.2), ("faint", 0.15),
                                           ("occlude", 0.15)) if rng.random() < p)
            if "perspective" in effects:
                piece = perspective(rng, piece)
            if "curve" in effects:
                piece = curve(rng, piece)
        box = visible_box(piece, x, y)
        if box is None:
            return None
        if not fits(box, w, h, taken):
            continue
        if "faint" in effects:  # a faint print: the logo blends 40-65% into what is under it
            piece.putalpha(piece.getchannel("A").point(lambda v, k=rng.uniform(0.4, 0.65): int(v * k)))
        im.paste(piece, (x, y), piece)
        if "occlude" in effects:
            occlude(rng, im, box)
        taken.append(box)
        return Planted(tuple(float(v) for v in box), mark.key, effects)
    return None


def make_scene(rng: random.Random, marks: list[Mark], size=(512, 512), logo_px=(40, 200),
               max_rot: float = 20.0, n_clutter: int | None = None, hard: bool = False
               ) -> tuple[Image.Image, list[Planted]]:
    """A product scene with ``marks`` planted. ``hard`` (detector training and its benchmark):
    photo backgrounds (scikit-image's samples) and the effects of ``plant(hard=True)``; off, the
    scene is exactly what the demo catalog has always been (same random stream)."""
    w, h = size
    if hard and rng.random() < 0.35:
        from logoscan.synth.photos import photo_background
        im = photo_background(rng, w, h)
    else:
        im = background(rng, w, h)
    face = product(rng, im)
    clutter(rng, im, face, rng.randint(0, 8 if hard else 5) if n_clutter is None else n_clutter)
    taken, planted = [], []
    for mark in marks:
        s = int(round(np.exp(rng.uniform(np.log(logo_px[0]), np.log(logo_px[1])))))
        p = plant(rng, im, mark, s, max_rot, taken, region=face if rng.random() < 0.8 else None, hard=hard)
        if p:
            planted.append(p)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return im, planted

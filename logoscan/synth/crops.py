"""Logo crops as the embedder sees them: clean renderings (like gallery references) and crops of
product scenes cut around the planted logo with detector-like box jitter (like detections).
Used by embedder training and evaluation, and by gallery threshold probes."""
from __future__ import annotations

import io
import random

from PIL import Image

from logoscan.models.embedder import square_crop
from logoscan.synth.marks import Mark, on_white, render
from logoscan.synth.scenes import make_scene


def jpeg(rng: random.Random, im: Image.Image, quality=(45, 95)) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(*quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def jittered_crop(rng: random.Random, im: Image.Image, box, size: int, pad: float, j: float = 0.1,
                  pad_jitter=(-0.05, 0.15)) -> Image.Image:
    """A detection-like crop: the box moved by up to ``j`` of its size, the padding varied."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    b = (x1 + rng.uniform(-j, j) * w, y1 + rng.uniform(-j, j) * h,
         x2 + rng.uniform(-j, j) * w, y2 + rng.uniform(-j, j) * h)
    return square_crop(im, b, pad + rng.uniform(*pad_jitter), size)


def clean_view(mark: Mark, size: int, pad: float) -> Image.Image:
    im = on_white(render(mark, 128))
    return square_crop(im, (0, 0, im.width, im.height), pad, size)


def scene_view(rng: random.Random, mark: Mark, size: int, pad: float) -> Image.Image:
    """A crop of a product scene around the planted logo, with detector-like box jitter."""
    for _ in range(5):
        scene, planted = make_scene(rng, [mark], size=(256, 256), logo_px=(48, 160),
                                    n_clutter=rng.randint(0, 4))
        if planted:
            break
    else:
        return clean_view(mark, size, pad)
    crop = jittered_crop(rng, scene, planted[0].box, size, pad, j=0.08, pad_jitter=(-0.05, 0.1))
    return jpeg(rng, crop) if rng.random() < 0.5 else crop

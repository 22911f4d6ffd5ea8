"""Real photographs as scene backgrounds: the sample images shipped inside the scikit-image wheel.

Only the files are read (scikit-image itself is never imported), so this needs the package
installed (the ``train`` extra) but not its import-time dependencies. Images that are logos or
pure test patterns are left out: a background must be logo-free.
"""
from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

from PIL import Image, ImageEnhance

# logo.png is scikit-image's own logo; astronaut, rocket and the motorcycles show real insignia
# and lettering (a NASA patch, a flag, maker's marks) that would be unlabelled logos; the rest
# are charts, masks or tiny patterns.
_SKIP = {"logo.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
         "chessboard_GRAY.png", "chessboard_RGB.png", "phantom.png", "microaneurysms.png",
         "horse.png", "clock_motion.png"}


@functools.lru_cache(maxsize=1)
def photo_paths() -> tuple[str, ...]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("photo backgrounds need scikit-image installed: pip install -e '.[train]'")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = sorted(str(p) for p in data.iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.name not in _SKIP)
    if not found:
        raise RuntimeError(f"no sample photos under {data}")
    return tuple(found)


@functools.lru_cache(maxsize=32)
def _photo(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def photo_background(rng: random.Random, w: int, h: int) -> Image.Image:
    """A random crop of a random sample photo, resized to (w, h), with jittered colour."""
    src = _photo(rng.choice(photo_paths()))
    k = rng.uniform(0.4, 1.0)
    cw, ch = max(int(src.width * k), 16), max(int(src.height * k), 16)
    if cw / ch > w / h:
        cw = max(int(ch * w / h), 16)
    else:
        ch = max(int(cw * h / w), 16)
    cw, ch = min(cw, src.width), min(ch, src.height)
    x, y = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
    im = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.3, 1.4))
    return ImageEnhance.Brightness(im).enhance(rng.uniform(0.6, 1.3))

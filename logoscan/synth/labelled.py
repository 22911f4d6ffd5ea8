"""Labelled crop sets for `logoscan calibrate` and its benchmark, made from marks.

Four kinds of labelled box on catalog-like product images (the crop is cut around the box as the
sweep cuts it around a detection):
``known`` (a gallery class, several views each), ``look-alike`` (not in the gallery, but close to
a gallery class: a text-similar name, or the same emblem shape or glyph), ``unknown`` (another
logo not in the gallery) and ``no-logo`` (a patch of a scene without any logo: packaging, text,
prices, barcodes). Only ``known`` crops carry a label.
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from PIL import Image

from logoscan.schema import BOX
from logoscan.synth.marks import GLYPHS, SHAPES, Mark, _variant, design, fonts
from logoscan.synth.scenes import make_scene

SCHEMA = pa.schema([("image_uri", pa.string()), ("box", BOX), ("label", pa.string()), ("kind", pa.string()),
                    ("category", pa.string()), ("name", pa.string())])


def look_alikes(rng: random.Random, mark: Mark, n: int, exclude: set | frozenset = frozenset(),
                key=design) -> list[Mark]:
    """Other logos close to ``mark``. A name one edit or a syllable away, set as another maker's
    wordmark (for wordmarks and named brand icons), or the same emblem shape with another glyph,
    or the same glyph in another shape. (An emblem with one letter of its caption changed is not
    a look-alike here: by ``marks.design`` it is the same design in another colourway.) Marks whose
    ``key`` is in ``exclude`` (the gallery's) are never made: they would be the gallery's own logos."""
    out = []
    for k in range(50 * n):
        if len(out) == n:
            break
        name, colors = f"{mark.key}~{k}", tuple(tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
        if mark.kind == "emblem":
            if k % 2 == 0:
                out.append(replace(mark, key=name, glyph=rng.choice([g for g in GLYPHS if g != mark.glyph])))
            else:
                out.append(replace(mark, key=name, shape=rng.choice([s for s in SHAPES if s != mark.shape])))
        elif mark.text:
            for _ in range(20):
                text, same = _variant(rng, mark.text)
                if not same:
                    break
            font = mark.font if mark.kind == "wordmark" and rng.random() < 0.5 else rng.choice(fonts())
            out.append(Mark(key=name, kind="wordmark", text=text, font=font, colors=colors,
                            extra={"underline": rng.random() < 0.3, "boxed": rng.random() < 0.3}))
        else:
            break  # an icon without a name: nothing to vary
        if key(out[-1]) in exclude or key(out[-1]) == key(mark):
            out.pop()
    return out


def scene_and_box(rng: random.Random, mark: Mark | None, side: tuple[int, int] = (480, 800),
                  logo_share: tuple[float, float] = (0.09, 0.3)) -> tuple[Image.Image, tuple]:
    """A catalog-like product image (as the demo catalog makes them) and a box around the planted
    ``mark`` with detector-like jitter; without a mark, a box on a logo-free patch (packaging,
    text, prices, barcodes)."""
    n = rng.randint(*side)
    lo, hi = int(n * logo_share[0]), int(n * logo_share[1])
    for _ in range(5):
        scene, planted = make_scene(rng, [mark] if mark else [], size=(n, n), logo_px=(lo, hi))
        if planted or mark is None:
            break
    if mark is None or not planted:
        s = rng.randint(lo, hi)
        x, y = rng.randint(0, n - s), rng.randint(0, n - s)
        return scene, (x, y, x + s, y + s)
    x1, y1, x2, y2 = planted[0].box
    w, h, j = x2 - x1, y2 - y1, 0.08
    return scene, (x1 + rng.uniform(-j, j) * w, y1 + rng.uniform(-j, j) * h,
                   x2 + rng.uniform(-j, j) * w, y2 + rng.uniform(-j, j) * h)


def write_labelled_crops(out: str | Path, known: list[tuple[str, str, Mark]], per_class: int,
                         look_alike: list[Mark], unknown: list[Mark], n_no_logo: int, seed: int) -> str:
    """Write catalog-like images (JPEG) under ``out``/images and the table
    ``out``/labelled_crops.parquet: image_uri, box, label, kind (category and name for reports).
    ``known``: (label, category, mark); the other kinds carry no label."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []

    def add(mark, label, kind, category):
        im, box = scene_and_box(rng, mark)
        path = out / "images" / f"{len(rows):06d}.jpg"
        im.save(path, "JPEG", quality=rng.randint(75, 92))
        rows.append({"image_uri": str(path.resolve()), "box": [float(v) for v in box], "label": label,
                     "kind": kind, "category": category, "name": mark.text if mark else ""})

    for label, category, m in known:
        for _ in range(per_class):
            add(m, label, "known", category)
    for m in look_alike:
        add(m, None, "look-alike", None)
    for m in unknown:
        add(m, None, "unknown", None)
    for _ in range(n_no_logo):
        add(None, None, "no-logo", None)
    path = out / "labelled_crops.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return str(path)

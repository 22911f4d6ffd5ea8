"""Pack the training part of a detector config's YOLO folders small enough to travel: to a GPU
machine lent for minutes, whose copy of the working tree is capped (64 MiB here). The held-out
photos of each dataset (its `heldout_classes` and `heldout_share`, split as `jobs/train_detector.py`
splits) are left out, so a machine that trains on the pack never sees them; what is kept is
re-encoded as WebP with its longest side capped, and optionally cut to a window around its boxes
(native pixels kept for small logos: the car badges are 74% under 32 px). Boxes are rewritten for
the new image, names kept, so the validation block `train_detector` takes from what is left is the
same one. Each folder gets `pack.json` (source, options, counts), which the model card quotes.

    python jobs/pack_yolo.py --config jobs/configs/train_detector.yaml --out .gpu/real \\
        --max-side 512 --crop car-badges=288 --quality 45
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from logoscan import config_io
from logoscan.train.detector import DetectorTrainConfig
from logoscan.train.yolo import YoloItem, load_yolo, split_heldout


def crop_window(w: int, h: int, px: np.ndarray, side: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A window of ``side`` px (or the union of the boxes, if larger) holding every box whole."""
    if len(px) == 0:
        cw, ch = min(side, w), min(side, h)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return x0, y0, x0 + cw, y0 + ch
    ux0, uy0 = int(np.floor(px[:, 0].min())), int(np.floor(px[:, 1].min()))
    ux1, uy1 = int(np.ceil(px[:, 2].max())), int(np.ceil(px[:, 3].max()))
    cw, ch = min(max(side, ux1 - ux0), w), min(max(side, uy1 - uy0), h)
    x0 = rng.randint(max(0, ux1 - cw), max(0, min(ux0, w - cw)))
    y0 = rng.randint(max(0, uy1 - ch), max(0, min(uy0, h - ch)))
    return x0, y0, x0 + cw, y0 + ch


def pack_item(it: YoloItem, class_index: dict, out: Path, max_side: int, crop: int, quality: int,
              rng: random.Random) -> int:
    with Image.open(it.image) as im:
        im = im.convert("RGB")
    px = it.pixel_boxes(im.width, im.height)
    if crop:
        x0, y0, x1, y1 = crop_window(im.width, im.height, px, crop, rng)
        im = im.crop((x0, y0, x1, y1))
        px = px - np.array([x0, y0, x0, y0], np.float32)
    k = min(1.0, max_side / max(im.size))
    if k < 1.0:
        im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.BILINEAR)
        px = px * k
    im.save(out / "images" / f"{it.image.stem}.webp", format="WEBP", quality=quality, method=4)
    norm = (px / np.array([im.width, im.height, im.width, im.height], np.float32)).clip(0, 1)
    lines = [f"{class_index[c]} {(b[0] + b[2]) / 2:.6f} {(b[1] + b[3]) / 2:.6f} {b[2] - b[0]:.6f} {b[3] - b[1]:.6f}"
             for c, b in zip(it.classes, norm)]
    (out / "labels" / f"{it.image.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return (out / "images" / f"{it.image.stem}.webp").stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a detector training config with `datasets`")
    ap.add_argument("--out", required=True, help="folder for the packed datasets (one sub-folder each)")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--quality", type=int, default=45, help="WebP quality")
    ap.add_argument("--crop", action="append", default=[], metavar="NAME=PX",
                    help="cut dataset NAME's photos to a PX-px window around their boxes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = config_io.load(DetectorTrainConfig, a.config, [])
    crops = {k: int(v) for k, v in (c.split("=", 1) for c in a.crop)}
    unknown = set(crops) - {Path(d.path).name for d in cfg.datasets}
    if unknown:
        sys.exit(f"--crop: no dataset named {sorted(unknown)} in {a.config}")
    total = 0
    for src in cfg.datasets:
        name = Path(src.path).name
        ds = load_yolo(src.path, unlabelled=src.unlabelled)
        keep, held = split_heldout(ds, src.heldout_classes, src.heldout_share)
        out = Path(a.out) / name
        for sub in ("images", "labels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        (out / "classes.txt").write_text("\n".join(ds.class_names) + "\n")
        index = {c: i for i, c in enumerate(ds.class_names)}
        rng = random.Random(a.seed)
        size = sum(pack_item(it, index, out, a.max_side, crops.get(name, 0), a.quality, rng) for it in keep)
        info = {"source": src.path, "photos": len(keep), "held_out_left_out": len(held),
                "heldout_classes": list(src.heldout_classes), "heldout_share": src.heldout_share,
                "max_side": a.max_side, "webp_quality": a.quality, "crop_px": crops.get(name, 0),
                "bytes": size, "command": "python jobs/pack_yolo.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        (out / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
        total += size
        print(f"{name}: {len(keep)} photos packed ({len(held)} held out left behind), {size / 2**20:.1f} MiB")
    print(f"total {total / 2**20:.1f} MiB in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Diagnostic (not a benchmark): how `detector.tiles` merges windows, and for which photo sizes
windows help, on the real held-out photos of jobs/bench_detector.py.

- ``--merge``: the windows are detected once (``tile_views``), then ``merge_tiles`` is run with
  each rule: a window keeping boxes of every size, up to 64 / 48 / 32 px, and up to 32 px only
  with score >= 0.7. AP50 per source, recall, recall under 32 px, precision against the boxes and
  false detections per logo-free photo, at the artifact's operating threshold.
- ``--by-size``: the whole photo against whole photo + windows, the photos split by their
  longest side (<= 416, 417-639, 640 px).

    python jobs/diag_detector_tiles.py [--merge] [--by-size] [--grid 2]

docs/bench/detector.md ("detector-v4 on the whole photo plus 2x2 windows") quotes what it printed.
Needs ../shared/data/real-photos and the train extra (scikit-image's logo-free photos).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))

MERGE_RULES = (("of every size", 0, 0.0), ("up to 64 px", 64, 0.0), ("up to 48 px", 48, 0.0),
               ("up to 32 px", 32, 0.0), ("up to 32 px, and only with score >= 0.7", 32, 0.7))
SIZES = ((0, 416), (417, 639), (640, 10_000))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", action="store_true", help="compare the window merge rules")
    ap.add_argument("--by-size", action="store_true", help="whole photo vs + windows, by photo size")
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if not (a.merge or a.by_size):
        ap.error("say --merge and/or --by-size")
    import numpy as np
    import torch

    from bench_detector import REAL_CONFIG, logo_free_photos, real_row
    from logoscan.config_io import load as load_config
    from logoscan.models.artifact import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_images, detect_tiled, merge_tiles, tile_views
    from logoscan.train.detector import DetectorTrainConfig, load_photo, real_split
    torch.set_num_threads(a.threads)
    model, config = load_artifact(default_artifact_path("detector"), inference=True)
    thr = float(config["score_thresh"])
    split = real_split(load_config(DetectorTrainConfig, REAL_CONFIG))
    names, photos, truths = [], [], []
    for name, item in split.heldout:
        im, boxes = load_photo(item)[:2]
        names.append(name)
        photos.append(im)
        truths.append(boxes)
    head = ("| photos | n | logos | AP50 | recall | recall >32 px | <32 px | 32–96 px | >96 px "
            "| detections / photo | precision vs boxes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    if a.merge:
        free, _ = logo_free_photos(6, 2026)
        views, where = tile_views(photos, a.grid, a.overlap)
        found = detect_images(model, views, 0.05, batch_size=4)
        fviews, fwhere = tile_views(free, a.grid, a.overlap)
        ffound = detect_images(model, fviews, 0.05, batch_size=4)
        print(f"## Merge rules, grid {a.grid}, overlap {a.overlap}, threshold {thr}\n")
        for rule, max_px, tile_thresh in MERGE_RULES:
            preds = merge_tiles(found, where, [p.shape for p in photos], max_px=max_px, tile_thresh=tile_thresh)
            fp = merge_tiles(ffound, fwhere, [p.shape for p in free], max_px=max_px, tile_thresh=tile_thresh)
            per_free = float(np.mean([(p[1] >= thr).sum() for p in fp]))
            print(f"A window keeps boxes {rule}: {per_free:.3f} false detections / logo-free photo\n\n{head}")
            for source in dict.fromkeys(names):
                idx = [i for i, n in enumerate(names) if n == source]
                print(real_row(source, [preds[i] for i in idx], [truths[i] for i in idx], thr))
            print(real_row("all", preds, truths, thr) + "\n", flush=True)
    if a.by_size:
        print(f"## By the photo's longest side, threshold {thr}\n\n{head}")
        for lo, hi in SIZES:
            idx = [i for i, p in enumerate(photos) if lo <= max(p.shape[:2]) <= hi]
            if not idx:
                continue
            for grid in (1, a.grid):
                preds = detect_tiled(model, [photos[i] for i in idx], 0.05, grid=grid, overlap=a.overlap,
                                     batch_size=4, max_px=32)
                what = "whole photo" if grid == 1 else f"+ {grid}x{grid} windows"
                print(real_row(f"{lo}-{hi} px, {what}", preds, [truths[i] for i in idx], thr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

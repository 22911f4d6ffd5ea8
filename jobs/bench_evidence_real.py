"""The evidence-based decision on real photographs, crop level: what each piece of evidence adds
to the distance when the gallery is the 378 clean car logos and the queries are real badges.

- Gallery: every clean car logo of ../shared/data/real-photos/car-logos-clean, one vector each.
- Test set: the badge crops (cut from their true boxes as the sweep cuts a detection) of half of
  the photos of the 6 makes held out of embedder training in every form
  (``logoscan.train.realcrops.HELDOUT_MAKES``), plus logo-free patches (24–160 px squares of half
  of the logo-free photos `jobs/bench_detector.py` uses: scikit-image's samples).
- Calibration set, two ways: (A) the other half of those makes' photos, as a team calibrates on
  labelled crops of its own gallery's logos (the embedder never saw these makes); (B) the photos of
  the makes the embedder trained on. Each with patches of the other half of the logo-free photos.
- Each crop's nearest logo (exact cosine in numpy: the same nearest neighbour Milvus returns for
  one vector per logo, without a server for 380 vectors), its runner-up and its box side.
- Rules calibrated on the calibration set at the target false-accept rate (a false accept: a crop
  flagged with a logo it does not carry, over all crops) and measured on the test set: the one
  distance threshold `logoscan calibrate` would choose for the category, and the evidence model
  (`logoscan.evidence`) with one feature added at a time. With `--ocr`, easyocr reads each crop,
  the nearest 10 logos are re-ranked by that text against each logo's name as its ``text`` (as a
  sweep with OCR on), and OCR agreement is evidence. No detector score: the boxes are given.

    python jobs/bench_evidence_real.py [--ocr] --write docs/bench/evidence_real.md
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))


def badges(root: Path, items, size: int, pad: float, makes: set | None):
    """(crops, their logo stem or '' where the make has none, box sides) of ``items``' badges."""
    from PIL import Image

    from logoscan.models.embedder import square_crop
    from logoscan.train.realcrops import MAKE_LOGO
    crops, labels, sides = [], [], []
    for it in items:
        im = Image.open(it.image).convert("RGB")
        for box, make in zip(it.pixel_boxes(*im.size), it.classes):
            if makes is not None and make not in makes:
                continue  # a kept make's badge in a held-out make's photo
            crops.append(square_crop(im, tuple(float(v) for v in box), pad, size))
            labels.append(MAKE_LOGO.get(make) or "")
            sides.append(float(np.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))))
    return crops, labels, sides


def patches(photos, per_photo: int, size: int, seed: int):
    """Logo-free square patches, 24–160 px, as a detector's false positive would be cut."""
    from PIL import Image
    rng = random.Random(seed)
    crops, sides = [], []
    for arr in photos:
        im = Image.fromarray(arr)
        for _ in range(per_photo):
            s = rng.randint(24, min(160, im.width, im.height))
            x, y = rng.randint(0, im.width - s), rng.randint(0, im.height - s)
            crops.append(im.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR))
            sides.append(float(s))
    return crops, sides


def nearest(q: np.ndarray, g: np.ndarray, names: list[str], read: list[str] | None = None) -> dict:
    """Each query's nearest logo and runner-up; with OCR text (``read``), the image neighbours
    re-ranked by it exactly as ``stages.match`` does (``stages.fuse``, the default OcrConfig), and
    the text's agreement with the nearest logo's ``text`` (its name: "mercedes-benz" → "mercedes benz")."""
    from logoscan import stages
    from logoscan.config import MatchConfig, OcrConfig
    from logoscan.textfeat import similarity
    ocr, k = OcrConfig(), MatchConfig().ocr_candidates
    sim = q @ g.T
    order = np.argsort(-sim, axis=1)[:, :k]
    out = {"label": [], "distance": [], "runner_up_distance": [], "ocr_agreement": []}
    for i in range(len(q)):
        hits = [{"label": names[j], "text": names[j].replace("-", " "), "distance": float(1.0 - sim[i, j])}
                for j in order[i]]
        if read is not None:
            hits = stages.fuse(hits, read[i], ocr.weight, ocr.floor)
        out["label"].append(hits[0]["label"])
        out["distance"].append(hits[0]["distance"])
        out["runner_up_distance"].append(hits[1]["distance"])
        a = similarity(read[i], hits[0]["text"]) if read is not None else None
        out["ocr_agreement"].append(np.nan if a is None else a)
    return {"label": np.array(out["label"], object), "category": np.array(["car"] * len(q), object),
            **{key: np.asarray(out[key], float) for key in ("distance", "runner_up_distance", "ocr_agreement")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", default=str(ROOT / "logoscan/weights/embedder"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/real-photos"))
    ap.add_argument("--target-far", type=float, default=0.01)
    ap.add_argument("--free-per-photo", type=int, default=6, help="logo-free photos per scikit-image sample")
    ap.add_argument("--patches", type=int, default=8, help="patches per logo-free photo")
    ap.add_argument("--max-train-photos", type=int, default=0, help="0: every photo of the trained makes")
    ap.add_argument("--ocr", action="store_true", help="read each crop (ocr extra) and fuse, as a sweep with OCR on")
    ap.add_argument("--write", default="")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--heldout-makes", default="", help="comma list; default: the embedder's held-out makes")
    a = ap.parse_args(argv)
    t0 = time.time()

    import torch

    from bench_detector import logo_free_photos
    from logoscan.calibration import choose_threshold, crop_evidence, fit_evidence, outcome_of
    from logoscan.evidence import WORDS, Model
    from logoscan.models.artifact import load_artifact
    from logoscan.models.embedder import embed_crops
    from logoscan.train.common import emit_report
    from logoscan.train.realcrops import HELDOUT_MAKES, clean_logo, logo_files, split_badges
    torch.set_num_threads(2)
    data = Path(a.data)
    model, cfg = load_artifact(a.embedder)
    size, pad = cfg["input_size"], cfg["crop_pad"]
    files = logo_files(data / "car-logos-clean")
    names = [f.stem for f in files]
    gallery = embed_crops(model, cfg, [clean_logo(f, size, pad) for f in files])
    heldout = tuple(a.heldout_makes.split(",")) if a.heldout_makes else HELDOUT_MAKES
    train, held = split_badges(data / "car-badges", heldout)
    if a.max_train_photos:
        train = random.Random(a.seed).sample(list(train), min(a.max_train_photos, len(train)))
    reader = None
    if a.ocr:
        from logoscan.ocr import load_reader, read_crops
        reader = load_reader()
    free, _ = logo_free_photos(a.free_per_photo, a.seed)
    held = sorted(held, key=lambda it: it.image.name)
    random.Random(a.seed).shuffle(held)
    sets = {}
    for name, items, makes, photos, seed in (
            ("A: the held-out makes' other photos", held[0::2], set(heldout), free[0::2], a.seed),
            ("B: the makes the embedder trained on", train, None, free[0::2], a.seed),
            ("test", held[1::2], set(heldout), free[1::2], a.seed + 1)):
        crops, labels, sides = badges(data / "car-badges", items, size, pad, makes)
        n_badges = len(crops)
        pc, ps = patches(photos, a.patches, size, seed)
        crops, labels, sides = crops + pc, labels + [""] * len(pc), sides + ps
        kinds = ["badge"] * n_badges + ["logo-free"] * len(pc)
        read = read_crops(reader, [np.asarray(c) for c in crops]) if reader is not None else None
        dec = nearest(embed_crops(model, cfg, crops), gallery, names, read)
        tl = np.array(labels, object)
        sets[name] = {"dec": dec, "tl": tl, "kinds": kinds, "badges": n_badges, "free": len(pc),
                      "correct": (dec["label"] == tl) & (tl != ""), "known": int((tl != "").sum()),
                      "ev": crop_evidence(dec, np.asarray(sides), ocr=reader is not None),
                      "read": 0 if read is None else sum(bool(x.strip()) for x in read)}
        print(f"{name}: {n_badges} badges, {len(pc)} logo-free patches, top-1 right "
              f"{sets[name]['correct'][:n_badges].mean():.3f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    test = sets["test"]

    def f(v, p=3):
        return "-" if v is None else f"{v:.{p}f}"
    lines = ["# The evidence-based decision on real photographs (crop level)", "",
             f"`python jobs/bench_evidence_real.py {' '.join(argv if argv is not None else sys.argv[1:])}` ({platform.machine()}, "
             f"{time.time() - t0:.0f} s). Embedder: {cfg['version']}; target false-accept rate {a.target_far:.0%}; "
             f"OCR {'on' if reader is not None else 'off'}.", "",
             *[ln for ln in __doc__.split("\n\n")[1].splitlines()], "",
             f"Test set: {test['badges']} badges of the held-out makes, {test['free']} logo-free patches; the nearest "
             f"logo is the badge's own for {test['correct'][:test['badges']].mean():.3f} of its badges"
             + (f"; OCR read text in {test['read']} crops." if reader is not None else ".")]
    for name, cal in sets.items():
        if name == "test":
            continue
        n = len(cal["tl"])
        dist = choose_threshold(cal["dec"]["distance"], cal["correct"], cal["known"], n, a.target_far * n, "far")
        ev = fit_evidence(cal["ev"], cal["correct"], cal["known"], a.target_far)
        rules = [("distance threshold (as `logoscan calibrate`)", test["dec"]["distance"] <= dist["threshold"],
                  f"≤ {dist['threshold']:.4f}", dist)]
        for i, (feat, step) in enumerate((ev or {}).get("features_added", {}).items()):
            m = Model.from_dict(step["model"])
            rules.append(("evidence: " + (WORDS[feat] if i == 0 else "+ " + WORDS[feat.split("+")[-1]]),
                          m.probability(test["ev"]) >= m.cut, f"P ≥ {m.cut:.3f}", step))
        lines += ["", f"## Calibrated on {name}", "",
                  f"{cal['badges']} badges ({cal['known']} of makes with a logo in the gallery), {cal['free']} "
                  f"logo-free patches; the nearest logo is the badge's own for "
                  f"{cal['correct'][:cal['badges']].mean():.3f} of its badges ({int(cal['correct'].sum())} crops).", "",
                  "| rule | cut | calibration recall | calibration FAR | test recall | test FAR | test precision "
                  "| test logo-free flagged |", "|---|---|---|---|---|---|---|---|"]
        for rname, flagged, cut, on_cal in rules:
            o = outcome_of(test["tl"], test["kinds"], test["dec"]["label"], flagged)
            lines.append(f"| {rname} | {cut} | {f(on_cal['recall'])} | {f(100 * on_cal['far'], 2)}% | "
                         f"{f(o['recall_known'])} | {f(100 * o['false_accept_rate'], 2)}% | {f(o['precision'])} | "
                         f"{f(100 * o['by_kind']['logo-free']['flagged'], 2)}% |")
        if ev:
            w = dict(zip(ev["model"]["features"], ev["model"]["weights"]))
            lines += ["", "The full model's weights (per standard deviation of each feature, log-odds): "
                      + ", ".join(f"{WORDS[k]} {v:+.2f}" for k, v in w.items()) + "."]
        else:
            lines += ["", "No evidence model: the calibration set has fewer than 10 right or 10 wrong nearest logos."]
    emit_report("\n".join(lines) + "\n", a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

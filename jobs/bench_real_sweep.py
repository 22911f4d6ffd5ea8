"""End to end on real photographs, as a new user would run it: a gallery of clean reference logos
(one picture each), a sweep over real photos, the default threshold (no calibration).

- Gallery: the 378 clean car logos of ../shared/data/real-photos/car-logos-clean (category ``car``).
- Catalog: every photo of the car makes held out of embedder training in every form
  (``logoscan.train.realcrops.HELDOUT_MAKES``), one item each, truth = its make's logo; plus
  logo-free photos: crops of the scikit-image sample photos kept as logo-free (truth: nothing).
- The sweep: ``logoscan scan`` with the shipped detector and the embedder under test, in process
  (``engine: local``: the same stage functions as on Ray), Milvus Lite.

Item-level precision and recall of the flagged (item, logo) pairs, and the share of logo-free
photos flagged; for each embedder given. ``--exemplars K``: the same catalog swept again with K real
photos of every make (the badge's box) beside its clean logo, as `gallery add --box` stores them. Needs the train extra (scikit-image).

    python jobs/bench_real_sweep.py --embedder embedder-v2=<artifact> --write docs/bench/real_sweep.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_inputs(work: Path, data: Path, n_free_per_photo: int, seed: int, calibration_half: bool = False,
                 exemplars: int = 0, heldout: tuple = (), exemplar_seed: int = 0) -> dict:
    """The gallery, catalog and truth; with ``calibration_half``, half of the held-out makes'
    photos (and of the logo-free ones) become labelled crops for `logoscan calibrate` instead
    (each badge box with its make's logo; 8 logo-free squares of 24-160 px per logo-free photo).
    With ``exemplars`` K, ``references-exemplars.parquet`` also holds, for every make with photos,
    K of its photos (drawn at random) as more references of its logo: the same label, the badge's
    ``box``, logo_id ``<logo>#photo-<n>``; the held-out makes' exemplar photos, and the photos
    numbered within 2 of them (the source's augmented copies), leave the catalog."""
    import random
    from PIL import Image

    from logoscan.schema import BOX
    from logoscan.train.realcrops import HELDOUT_MAKES, MAKE_LOGO, logo_files, split_badges
    heldout = heldout or HELDOUT_MAKES
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_detector import logo_free_photos
    work.mkdir(parents=True, exist_ok=True)
    refs = [{"logo_id": f.stem, "label": f.stem, "category": "car", "image_uri": str(f.resolve()), "text": None}
            for f in logo_files(data / "car-logos-clean")]
    pq.write_table(pa.Table.from_pylist(refs, schema=pa.schema([(k, pa.string()) for k in refs[0]])),
                   work / "references.parquet")
    trained, held = split_badges(data / "car-badges", heldout)
    if exemplars:
        held, extra = exemplar_references(trained, held, exemplars, exemplar_seed, heldout)
        pq.write_table(pa.Table.from_pylist(refs + extra, schema=pa.schema(
            [(k, pa.string()) for k in refs[0]] + [("box", BOX)])),
            work / "references-exemplars.parquet")
    free, _ = logo_free_photos(n_free_per_photo, seed)
    crops = []
    if calibration_half:
        held = sorted(held, key=lambda it: it.image.name)
        random.Random(seed).shuffle(held)
        cal, held = held[0::2], held[1::2]
        cal_free, free = free[0::2], free[1::2]
        rng = random.Random(seed + 1)
        for it in cal:
            with Image.open(it.image) as im:
                size = im.size
            for box, make in zip(it.pixel_boxes(*size), it.classes):
                if make in heldout:
                    crops.append({"image_uri": str(it.image.resolve()), "label": MAKE_LOGO[make] or "",
                                  "box": [float(v) for v in box], "kind": "badge"})
        (work / "logo-free-cal").mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(cal_free):
            p = work / "logo-free-cal" / f"free-cal-{i:03d}.jpg"
            Image.fromarray(arr).save(p, "JPEG", quality=90)
            h, w = arr.shape[:2]
            for _ in range(8):
                side = rng.randint(24, min(160, w, h))
                x, y = rng.randint(0, w - side), rng.randint(0, h - side)
                crops.append({"image_uri": str(p.resolve()), "label": "", "box": [float(x), float(y), float(x + side),
                                                                                  float(y + side)], "kind": "logo-free"})
        pq.write_table(pa.Table.from_pylist(crops, schema=pa.schema([("image_uri", pa.string()), ("label", pa.string()),
                                                                     ("box", BOX), ("kind", pa.string())])),
                       work / "calibration-crops.parquet")
    manifest, truth = [], []
    for it in held:
        item = f"car-{it.image.stem}"
        manifest.append({"item_id": item, "image_uri": str(it.image.resolve()), "image_id": item})
        for make in sorted(set(it.classes) & set(heldout)):
            truth.append({"item_id": item, "label": MAKE_LOGO[make], "category": "car"})
    (work / "logo-free").mkdir(exist_ok=True)
    for i, arr in enumerate(free):
        p = work / "logo-free" / f"free-{i:03d}.jpg"
        Image.fromarray(arr).save(p, "JPEG", quality=90)
        manifest.append({"item_id": f"free-{i:03d}", "image_uri": str(p.resolve()), "image_id": f"free-{i:03d}"})
        truth.append({"item_id": f"free-{i:03d}", "label": None, "category": None})
    pq.write_table(pa.Table.from_pylist(manifest), work / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(truth, schema=pa.schema([("item_id", pa.string()), ("label", pa.string()),
                                                                 ("category", pa.string())])),
                   work / "truth.parquet")
    return {"photos": len(held), "logo_free": len(free), "references": len(refs), "calibration_crops": len(crops),
            "calibration_badges": sum(c["kind"] == "badge" for c in crops),
            "exemplar_references": len(extra) if exemplars else 0}


def exemplar_references(trained: list, held: list, k: int, seed: int, heldout: tuple) -> tuple[list, list[dict]]:
    """(the held-out items left for the catalog, K exemplar references per make with a logo)."""
    import random
    from PIL import Image

    from logoscan.train.realcrops import MAKE_LOGO
    rng, refs, taken = random.Random(seed), [], set()
    for items in (held, trained):
        for make in sorted({c for it in items for c in it.classes if MAKE_LOGO.get(c)}, key=str.lower):
            if (items is held) != (make in heldout):
                continue
            photos = sorted((it for it in items if make in it.classes), key=lambda it: it.image.name)
            for it in rng.sample(photos, min(k, len(photos))):
                with Image.open(it.image) as im:
                    box = it.pixel_boxes(*im.size)[it.classes.index(make)]
                refs.append({"logo_id": f"{MAKE_LOGO[make]}#photo-{it.image.stem}", "label": MAKE_LOGO[make],
                             "category": "car", "image_uri": str(it.image.resolve()), "text": None,
                             "box": [float(v) for v in box]})
                if items is held:
                    taken.add(it.image.stem)
    left = [it for it in held if not any(_near(it.image.stem, n) for n in taken)]
    return left, refs


def _near(stem: str, other: str) -> bool:
    """The same photo, or (photos numbered as in the real set) one within 2 of it: an augmented copy."""
    return stem == other or (stem.isdigit() and other.isdigit() and abs(int(stem) - int(other)) <= 2)


def sweep(work: Path, data: Path, name: str, embedder: str, detector,
          views: tuple[str, ...], decision: str | None = None, detect: bool = False,
          refs: str = "references.parquet") -> dict:
    """One sweep; ``decision`` None: the gallery's default threshold, as a new user gets it;
    "distance" / "evidence": calibrated on the calibration half first (``detect``: on the
    detector's regions of those photos, `calibrate --detect`), then that policy.decision.
    ``detector``: the sweep's (and calibration's) DetectorConfig."""
    from logoscan.calibration import calibrate
    from logoscan.config import CalibrateConfig, EmbedderConfig, FetchConfig, PolicyConfig, ScanConfig
    from logoscan.evaluate import evaluate, read_flagged
    from logoscan.gallery import build, release_lite
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.sweep import run_scan
    run = work / (name + ("" if views == ("clean",) else "-views") + (f"-{decision}" if decision else "")
                  + ("-detect" if detect else "") + ("-exemplars" if refs != "references.parquet" else ""))
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    db = str(run / "milvus.db")
    emb, emb_cfg = load_artifact(embedder or default_artifact_path("embedder"))
    t0 = time.time()
    meta = build(str(work / refs), db, "cars", emb, emb_cfg, views=views)
    build_s = time.time() - t0
    release_lite(db)
    del emb
    cal = None
    if decision:
        cal = calibrate(CalibrateConfig(crops=str(work / "calibration-crops.parquet"), milvus_uri=db, collection="cars",
                                        out=str(run / "calibration"), embedder=EmbedderConfig(artifact=embedder),
                                        detect=detect, detector=detector))
        release_lite(db)
    cfg = ScanConfig(manifest=str(work / "manifest.parquet"), milvus_uri=db, collection="cars",
                     out=str(run / "out"), run_id="real", engine="local", checkpoint_every=0,
                     fetch=FetchConfig(allowed_roots=(str(data.resolve()), str(work.resolve()))),
                     detector=detector, embedder=EmbedderConfig(artifact=embedder),
                     policy=PolicyConfig(decision=decision or "distance"))
    summary = run_scan(cfg)
    result = evaluate(summary["outputs"]["summary"], str(work / "truth.parquet"))
    _, flagged = read_flagged(summary["outputs"]["summary"])
    items = set(flagged.column("item_id").to_pylist()) if flagged is not None else set()
    free = [i for i in pq.read_table(work / "manifest.parquet").column("item_id").to_pylist() if i.startswith("free-")]
    overall = result["by_category"]["overall"]
    return {"name": name, "views": len(views), "references": meta["references"], "embedder_version": emb_cfg["version"], "threshold": meta["default_threshold"],
            "threshold_calibration": meta["threshold_calibration"], "gallery_build_s": round(build_s, 1),
            "precision": overall["precision"], "recall": overall["recall"], "flagged_pairs": overall["flagged"],
            "truth_pairs": overall["truth"], "logo_free_flagged": sum(i in items for i in free) / max(len(free), 1),
            "regions": summary["regions"], "images_per_s": summary["images_per_s"],
            "rows_errored": summary["rows_errored"], "decision": decision, "detect": detect,
            "calibrated": None if cal is None else {
                "threshold": cal["modes"]["image"]["categories"].get("car", {}).get("threshold"),
                "evidence_cut": ((cal["modes"]["image"].get("evidence") or {}).get("model") or {}).get("cut")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/real-photos")
    ap.add_argument("--embedder", action="append", default=[], metavar="NAME=PATH",
                    help="an embedder artifact to sweep with (repeatable); default: the shipped one")
    ap.add_argument("--views", action="append", default=[], metavar="V1,V2,...",
                    help="gallery views to sweep with (repeatable; each a comma list, 'clean' first); default: clean")
    ap.add_argument("--detector-input", type=int, default=None, help="detector.input_size (default: the artifact's)")
    ap.add_argument("--detector-tiles", type=int, default=1,
                    help="detector.tiles: also detect in N x N windows of each photo (default 1: the whole photo)")
    ap.add_argument("--logo-free-crops", type=int, default=6, help="crops per logo-free sample photo")
    ap.add_argument("--calibrated", action="store_true",
                    help="half of the held-out makes' photos become labelled crops; sweep the other half with the "
                         "default threshold, then calibrated: distance thresholds, the evidence model")
    ap.add_argument("--exemplars", type=int, default=0, metavar="K",
                    help="also sweep a gallery holding K real photos of every make with photos beside its clean "
                         "logo (the held-out makes' exemplar photos leave the catalog; both galleries sweep it)")
    ap.add_argument("--exemplar-seed", type=int, default=0, help="which photos --exemplars draws")
    ap.add_argument("--heldout-makes", default="", help="comma list; default: the embedder's held-out makes")
    ap.add_argument("--work", default="build/real-sweep")
    ap.add_argument("--write", default="")
    a = ap.parse_args(argv)
    from logoscan.log import configure
    from logoscan.models import default_artifact_path
    from logoscan.train.common import emit_report
    from logoscan.train.realcrops import HELDOUT_MAKES
    configure()
    data = Path(a.data)
    if not (data / "car-badges").is_dir():
        print(f"{data}: no car-badges/ (see ../shared/data/real-photos/README.md)", file=sys.stderr)
        return 2
    work = Path(a.work)
    if a.exemplars < 0 or (a.exemplars and a.calibrated):
        ap.error("--exemplars takes a count >= 0, in a run without --calibrated")
    heldout = tuple(m for m in a.heldout_makes.split(",") if m) or HELDOUT_MAKES
    n = write_inputs(work, data, a.logo_free_crops, 0, a.calibrated, a.exemplars, heldout, a.exemplar_seed)
    specs = [s.partition("=")[::2] for s in a.embedder] or [("shipped", default_artifact_path("embedder"))]
    view_sets = [tuple(v.split(",")) for v in a.views] or [("clean",)]
    decisions = ((None, False), ("distance", False), ("evidence", False), ("distance", True), ("evidence", True)) \
        if a.calibrated else ((None, False),)
    galleries = ("references.parquet", "references-exemplars.parquet") if a.exemplars else ("references.parquet",)
    from logoscan.config import DetectorConfig
    detector = DetectorConfig(input_size=a.detector_input, tiles=a.detector_tiles)
    rows = [sweep(work, data, name, path, detector, vs, d, det, g) for name, path in specs for vs in view_sets
            for d, det in decisions for g in galleries]
    words = {None: "default threshold", "distance": "calibrated thresholds", "evidence": "calibrated evidence model"}
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Real photographs, end to end",
        "",
        "Command: `python jobs/bench_real_sweep.py" + "".join(f" --embedder {s}" for s in a.embedder)
        + "".join(f" --views {v}" for v in a.views)
        + (f" --detector-input {a.detector_input}" if a.detector_input else "")
        + (f" --detector-tiles {a.detector_tiles}" if a.detector_tiles > 1 else "")
        + (" --calibrated" if a.calibrated else "") + (f" --exemplars {a.exemplars}" if a.exemplars else "")
        + (f" --exemplar-seed {a.exemplar_seed}" if a.exemplar_seed else "") + "`",
        "",
        f"Gallery: {n['references']} clean car logos, one picture each (category `car`), its default threshold "
        "as `gallery build` sets it (no calibration" + (", but in the calibrated rows" if a.calibrated else "")
        + "). Catalog: the "
        f"{n['photos']} photos of the car makes held out of embedder training ({', '.join(heldout)}), "
        f"truth = the make's logo, and {n['logo_free']} logo-free photos (crops of scikit-image's logo-free "
        "samples). The shipped detector at its operating threshold"
        + (f", on the whole photo and {a.detector_tiles}x{a.detector_tiles} windows of it (`detector.tiles`)"
           if a.detector_tiles > 1 else "") + "; `engine: local`, Milvus Lite."
        + (f" With `--calibrated`, half of the held-out makes' photos and of the logo-free photos were set aside "
           f"as {n['calibration_crops']} labelled crops ({n['calibration_badges']} badge boxes with their make's "
           "logo, 8 logo-free squares per logo-free photo) for `logoscan calibrate` at 1% false accepts; the "
           "catalog is the other half. \"On the detector's regions\": `calibrate --detect`, whose crops are "
           "the detector's regions on those photos (over a badge box: its make's logo; elsewhere, and on the "
           "logo-free photos: must not be flagged), with their detector scores." if a.calibrated else "")
        + (f" With `--exemplars {a.exemplars}`, a second gallery also holds {n['exemplar_references']} real photos "
           f"({a.exemplars} per make with photos, the badge's box) as more references of their make's logo; the held-out "
           "makes' exemplar photos (and those numbered within 2 of them: augmented copies) are not in the catalog, "
           "which both galleries sweep." if a.exemplars else ""),
        "",
        "| embedder | references | vectors per logo | decision | threshold | precision | recall | flagged pairs / truth pairs "
        "| logo-free photos flagged | regions | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['name']} ({r['embedder_version']}) | {r['references']} | {r['views']} | {words[r['decision']]}"
          + (" (calibrated on the detector's regions)" if r["detect"] else "") + " | "
          + (f"{r['threshold']:.3f} ({r['threshold_calibration'].get('probe_source', 'rendered')} probes)"
             if not r["decision"] else f"{r['calibrated']['threshold']:.3f}" if r["decision"] == "distance"
             else f"P ≥ {r['calibrated']['evidence_cut']:.3f}" if r["calibrated"]["evidence_cut"] is not None
             else "no model: too few right matches")
          + f" | {f(r['precision'])} | {f(r['recall'])} | {r['flagged_pairs']} / {r['truth_pairs']} "
          f"| {r['logo_free_flagged']:.3f} | {r['regions']} | {r['images_per_s']} |" for r in rows],
        "",
        "Bars (issue #23): precision ≥ 0.90 at recall ≥ 0.50, logo-free photos flagged ≤ 5%.",
        "",
    ]
    if any(r["rows_errored"] for r in rows):
        lines += [f"Rows errored (not scanned): {', '.join(str(r['rows_errored']) for r in rows)}.", ""]
    emit_report("\n".join(lines), a.write)
    print(json.dumps(rows, indent=1, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

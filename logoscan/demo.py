"""`logoscan demo`: make a sample catalog and gallery, build the gallery in Milvus Lite, sweep it on
local Ray, and print what was flagged and how well (item-level precision/recall vs the truth).

Sample data (all made here, deterministic from --seed):
  refs/*.png + references.parquet   the gallery: invented sustainability and prohibited marks,
                                    brand icons from simplepycons
  catalog/*.jpg + manifest.parquet  product-like images: gallery logos planted at random places,
                                    scales, rotations and colourways; logos *not* in the gallery
                                    (must not be flagged); images with no logo; and a few bad rows
  truth.parquet                     (item_id, label, category) of every planted gallery logo
  calibration/labelled_crops.parquet  labelled crops for `calibrate`: the gallery's logos in
                                    scenes, look-alikes of them, other logos and no-logo patches
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from logoscan.synth.marks import (Mark, brand_mark, brand_slugs, demo_exclusions, demo_gallery, on_white, random_mark, render,
                                  renderer)
from logoscan.synth.scenes import make_scene


def write_references(workdir: str | Path, gallery: list[tuple[str, str, str, Mark]]) -> str:
    """Reference images (PNG) and references.parquet for (logo_id, label, category, mark). A
    reference's ``text`` is what the logo itself reads (a brand icon shows no name)."""
    work = Path(workdir)
    (work / "refs").mkdir(parents=True, exist_ok=True)
    refs = []
    for logo_id, label, category, mark in gallery:
        path = work / "refs" / f"{logo_id}.png"
        on_white(render(mark, 256)).save(path)
        refs.append({"logo_id": logo_id, "label": label, "category": category,
                     "image_uri": str(path.resolve()), "text": None if mark.kind == "icon" else (mark.text or None)})
    pq.write_table(pa.Table.from_pylist(refs, schema=pa.schema([(k, pa.string()) for k in (
        "logo_id", "label", "category", "image_uri", "text")])), work / "references.parquet")
    return str(work / "references.parquet")


def make_sample_data(workdir: str | Path, n_images: int = 300, seed: int = 7) -> dict[str, str]:
    renderer()  # before anything is written: a runtime-only install says which extra draws the data
    work = Path(workdir)
    (work / "catalog").mkdir(parents=True, exist_ok=True)
    gallery = demo_gallery()
    write_references(work, gallery)

    rng = random.Random(seed)
    pairs, demo_brands = demo_exclusions()
    others = [s for s in brand_slugs() if s not in demo_brands]
    unknown = [brand_mark(s) for s in rng.sample(others, 40)]
    while len(unknown) < 60:
        m = random_mark(rng, f"unknown-{len(unknown)}")
        if (m.shape, m.glyph) not in pairs:
            unknown.append(m)
    by_key = {m.key: (label, category) for _, label, category, m in gallery}
    manifest, truth = [], []
    for i in range(n_images):
        item = f"item-{i:05d}"
        r = rng.random()
        marks = []
        if r < 0.55:
            marks = rng.sample([m for *_, m in gallery], rng.choice((1, 1, 2)))
        elif r < 0.65:
            marks = [rng.choice([m for *_, m in gallery]), rng.choice(unknown)]
        elif r < 0.80:
            marks = [rng.choice(unknown)]
        side = rng.randint(480, 800)
        im, planted = make_scene(rng, marks, size=(side, side), logo_px=(int(side * 0.09), int(side * 0.3)))
        path = work / "catalog" / f"{item}.jpg"
        im.save(path, "JPEG", quality=rng.randint(75, 92))
        manifest.append({"item_id": item, "image_uri": str(path.resolve()), "image_id": f"{item}-0"})
        labels = {by_key[p.key] for p in planted if p.key in by_key}
        for label, category in sorted(labels):
            truth.append({"item_id": item, "label": label, "category": category})
        if not labels:
            truth.append({"item_id": item, "label": None, "category": None})
    # rows a real catalog has too: they must end in the errors file, not abort the sweep
    (work / "catalog" / "not-an-image.jpg").write_text("<html>404 not found</html>")
    manifest += [
        {"item_id": "bad-missing", "image_uri": str((work / "catalog" / "missing.jpg").resolve()), "image_id": "bad-missing-0"},
        {"item_id": "bad-html", "image_uri": str((work / "catalog" / "not-an-image.jpg").resolve()), "image_id": "bad-html-0"},
        dict(manifest[0]),  # a duplicate row: scanned once
    ]
    pq.write_table(pa.Table.from_pylist(manifest), work / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(truth, schema=pa.schema([("item_id", pa.string()), ("label", pa.string()),
                                                                 ("category", pa.string())])),
                   work / "truth.parquet")
    return {"references": str(work / "references.parquet"), "manifest": str(work / "manifest.parquet"),
            "truth": str(work / "truth.parquet")}


def make_calibration_crops(workdir: str | Path, seed: int = 7, per_class: int = 24, n_other: int = 60,
                           n_no_logo: int = 100) -> str:
    """A labelled crop set for the demo gallery (its own seed: none of these images is in the
    catalog): ``per_class`` boxes per gallery logo, 3 look-alikes of each, ``n_other`` other brands
    and as many invented logos, ``n_no_logo`` logo-free boxes."""
    from logoscan.synth.labelled import look_alikes, write_labelled_crops
    from logoscan.synth.marks import design, unseen_invented
    rng = random.Random(seed + 1000)
    gallery = demo_gallery()
    _, demo_brands = demo_exclusions()
    others = [brand_mark(s) for s in rng.sample([s for s in brand_slugs() if s not in demo_brands], n_other)]
    designs = {design(m) for *_, m in gallery}
    similar = [x for *_, m in gallery for x in look_alikes(rng, m, 3, designs)]
    return write_labelled_crops(Path(workdir) / "calibration", [(label, cat, m) for _, label, cat, m in gallery],
                                per_class, similar, others + unseen_invented(seed + 1000, n_other), n_no_logo,
                                seed + 2000)


def run_demo(workdir: str = "demo-output", n_images: int = 300, seed: int = 7, engine: str = "ray",
             num_cpus: int | None = None) -> dict:
    import time

    from logoscan.calibration import calibrate
    from logoscan.config import CalibrateConfig, RayConfig, ScanConfig
    from logoscan.evaluate import evaluate, format_table
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.sweep import run_scan

    t0 = time.time()
    work = Path(workdir).resolve()
    print(f"[1/5] making sample data in {work} ({n_images} catalog images) ...", flush=True)
    paths = make_sample_data(work, n_images, seed)
    if engine == "ray":  # start Ray before any Milvus client exists in this process (gRPC + fork)
        from logoscan.sweep import init_ray
        init_ray(RayConfig(num_cpus=num_cpus))
    print(f"[2/5] building the gallery in Milvus Lite ({work / 'milvus.db'}) ...", flush=True)
    emb, emb_cfg = load_artifact(default_artifact_path("embedder"))
    meta = build(paths["references"], str(work / "milvus.db"), "demo_logos", emb, emb_cfg)
    del emb
    print(f"      {meta['references']} references, categories {meta['categories']}, "
          f"version {meta['gallery_version']}", flush=True)
    print("[3/5] calibrating its thresholds on labelled crops (1% false accepts) ...", flush=True)
    paths["crops"] = make_calibration_crops(work, seed)
    cal = calibrate(CalibrateConfig(crops=paths["crops"], milvus_uri=str(work / "milvus.db"),
                                    collection="demo_logos", out=str(work / "calibration")))["modes"]["image"]
    print(f"      {cal['outcome']['crops']} crops; thresholds "
          + ", ".join(f"{c} {v['threshold']:.3f}" for c, v in cal["categories"].items())
          + f" (+{len(cal['classes'])} stricter class thresholds); on these crops recall "
            f"{cal['outcome']['recall_known']:.3f}, false accepts {cal['outcome']['false_accept_rate']:.3%}", flush=True)
    print(f"[4/5] sweeping the catalog on {'local Ray' if engine == 'ray' else 'one process'} ...", flush=True)
    cfg = ScanConfig(manifest=paths["manifest"], milvus_uri=str(work / "milvus.db"), collection="demo_logos",
                     out=str(work / "out"), run_id="demo", engine=engine,
                     ray=replace(RayConfig(), num_cpus=num_cpus))
    summary = run_scan(cfg)
    print("[5/5] evaluating the review queues against the truth; the reviewers' pages ...", flush=True)
    result = evaluate(summary["outputs"]["summary"], paths["truth"])
    from logoscan.report import write_report
    report = write_report(summary["outputs"]["summary"])
    print()
    print(f"rows in {summary['rows_in']} = scanned {summary['rows_scanned']} + errored {summary['rows_errored']}"
          f"  ({summary['regions']} regions detected, {summary['flagged']} flagged, "
          f"{summary['images_per_s']} images/s)")
    print("review queues:")
    for q, p in summary["outputs"]["queues"].items():
        print(f"  {q:16s} {summary['flagged_by_queue'][q]:4d} rows  {p}")
    print(f"errors:            {summary['outputs']['errors']}")
    print(f"run summary:       {summary['outputs']['summary']}")
    print(f"review pages:      {report['out']}/index.html  (logoscan report {work / 'out'})")
    print()
    print(format_table(result))
    overall = result["by_category"]["overall"]
    print(f"\ndemo item-level recall {overall['recall']:.3f}, precision {overall['precision']:.3f} "
          f"(bar: both >= 0.9); took {time.time() - t0:.0f} s")
    return {"summary": summary, "evaluation": result}

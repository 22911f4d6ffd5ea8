"""Incremental sweeps: the embedding store makes a nightly run scan only new and changed images,
and `rematch` checks the whole stored catalog against a changed gallery without reading images.

Real sweeps (shipped models, Milvus Lite, in-process engine) on synthetic catalogs; flags are
compared with a full re-scan's."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logoscan.config import DetectorConfig, FetchConfig, RematchConfig, ScanConfig, StoreConfig
from logoscan.sweep import run_rematch, run_scan

from tests.conftest import renamed_artifact, upload_dir
from test_reliability import Flags


def _flags(summary) -> Flags:
    from logoscan import storage
    rows = []
    for uri in summary["outputs"]["queues"].values():
        fs, path = storage.resolve(uri)
        rows += pq.read_table(path, filesystem=fs).to_pylist()
    return Flags(sorted((r["item_id"], r["image_id"], r["box"], r["label"], r["logo_id"], r["distance"])
                        for r in rows))


def _gallery(work: Path, refs: str, db: str, drop_label: str | None = None) -> dict:
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    if drop_label:
        t = pq.read_table(refs)
        t = t.filter(pa.array([lab != drop_label for lab in t.column("label").to_pylist()]))
        refs = str(work / "refs-without.parquet")
        pq.write_table(t, refs)
    model, cfg = load_artifact(default_artifact_path("embedder"))
    return build(refs, db, "logos", model, cfg)


def _cfg(manifest, db, out, run_id, **kw) -> ScanConfig:
    return ScanConfig(manifest=str(manifest), milvus_uri=str(db), out=str(out), run_id=run_id,
                      run_date="2026-11-23", engine=kw.pop("engine", "local"), **kw)


def _manifest(work: Path, items: range, name: str) -> str:
    t = pq.read_table(work / "manifest.parquet")
    keep, seen, mask = {f"item-{i:05d}" for i in items}, set(), []
    for x in t.column("item_id").to_pylist():  # the sample's bad rows and its duplicate row left out
        mask.append(x in keep and x not in seen)
        seen.add(x)
    t = t.filter(pa.array(mask))
    pq.write_table(t, work / name)
    return str(work / name)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_second_night_scans_only_new_and_changed_images(tmp_path, engine):
    """40 images; the next night adds 4 (10%) and changes 2 (5%): exactly those 6 are scanned,
    the other 38 come from the store, and the flags equal a full re-scan's. Under Ray the plan is
    made inside Ray Data (the store's index joins the manifest in the shuffle)."""
    from logoscan.config import RayConfig

    def cfg(*a, **kw):
        return _cfg(*a, **kw) if engine == "local" else _cfg(*a, engine="ray", ray=RayConfig(num_cpus=2, fetch_batch=8),
                                                             **kw)
    from logoscan.demo import make_sample_data
    from logoscan.store import Store
    work = tmp_path / "w"
    paths = make_sample_data(work, n_images=46, seed=11)
    db = str(tmp_path / "g.db")
    _gallery(work, paths["references"], db)
    out = tmp_path / "out"

    night1 = run_scan(cfg(_manifest(work, range(40), "m1.parquet"), db, out, "n1"))
    assert night1["rows_scanned"] == 40 and night1["store"]["written"] == 40

    for old, new in ((5, 44), (17, 45)):  # a product photo replaced: same URI, other bytes
        shutil.copyfile(work / "catalog" / f"item-{new:05d}.jpg", work / "catalog" / f"item-{old:05d}.jpg")
    m2 = _manifest(work, range(44), "m2.parquet")
    night2 = run_scan(cfg(m2, db, out, "n2", store=StoreConfig(incremental=True)))
    assert (night2["rows_in"], night2["rows_scanned"], night2["rows_reused"], night2["rows_errored"]) == (44, 6, 38, 0)
    assert {k: night2["store"][k] for k in ("new", "changed", "reused", "written")} == \
        {"new": 4, "changed": 2, "reused": 38, "written": 6}
    # what night 2 appended to the store: exactly the new and changed images
    store = Store.folders(str(out / "store"))[0]
    appended = pq.read_table(store.region_files()[-1], columns=["item_id"]).column("item_id").to_pylist()
    assert set(appended) == {f"item-{i:05d}" for i in (5, 17, 40, 41, 42, 43)}

    full = run_scan(cfg(m2, db, tmp_path / "full", "f", store=StoreConfig(write=False)))
    assert full["rows_scanned"] == 44 and full["store"] is None
    assert _flags(night2) == _flags(full) and len(_flags(full)) > 0

    # compaction keeps the newest entry of each image: the next night still reuses all 44
    from logoscan.cli import main
    assert main(["store", "compact", "--store", str(out / "store"), "--yes"]) == 0
    assert len(store.region_files()) == 1
    night3 = run_scan(cfg(m2, db, out, "n3", store=StoreConfig(incremental=True)))
    assert (night3["rows_scanned"], night3["rows_reused"]) == (0, 44)
    assert _flags(night3) == _flags(full)


def test_rematch_flags_a_new_logo_without_reading_any_image(tmp_path):
    """A logo added to the gallery after the scan: `rematch` finds it in the stored catalog with
    the catalog's images gone, and shows only the flags that are new."""
    from logoscan.demo import make_sample_data
    work = tmp_path / "w"
    paths = make_sample_data(work, n_images=24, seed=5)
    truth = pq.read_table(paths["truth"]).to_pylist()
    counts = {}
    for r in truth:
        if r["label"]:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    new_logo = max(counts, key=counts.get)  # the label planted in most images
    db = str(tmp_path / "g.db")
    v1 = _gallery(work, paths["references"], db, drop_label=new_logo)
    manifest = _manifest(work, range(24), "m.parquet")
    night = run_scan(_cfg(manifest, db, tmp_path / "out", "night"))
    assert new_logo not in {f[3] for f in _flags(night)}

    v2 = _gallery(work, paths["references"], db)  # the new logo is added; same collection
    assert v2["gallery_version"] != v1["gallery_version"]
    full = run_scan(_cfg(manifest, db, tmp_path / "full", "full", store=StoreConfig(write=False)))
    seen = {(f[0], f[1], f[3]) for f in _flags(night)}
    expected = Flags([f for f in _flags(full) if (f[0], f[1], f[3]) not in seen])
    assert expected and {f[3] for f in expected} == {new_logo}

    shutil.rmtree(work / "catalog")  # the image store is gone: rematch must not need it
    cfg = RematchConfig(store=str(tmp_path / "out" / "store"), milvus_uri=db, out=str(tmp_path / "rm"),
                        run_id="rematch-1", run_date="2026-11-23")
    r = run_rematch(cfg)
    assert r["rows_in"] == 24 and r["rows_scanned"] == 0 and r["rows_errored"] == 0
    assert r["store"]["previous"] and r["store"]["previous"].startswith(v1["gallery_version"])
    assert _flags(r) == expected and r["flagged_all"] == len(_flags(full))
    rows = [row for p in r["outputs"]["queues"].values() for row in pq.read_table(p).to_pylist()]
    assert all(row["thumbnail_jpeg"] and row["gallery_version"] == v2["gallery_version"] for row in rows)
    assert (tmp_path / "rm" / "runs" / "rematch-1" / "_SUCCESS").exists()

    again = run_rematch(replace(cfg, run_id="rematch-2"))  # already shown: nothing new
    assert again["flagged"] == 0 and again["flagged_all"] == r["flagged_all"]
    rerun = run_rematch(cfg)  # the same run again replaces its own output, unchanged
    assert _flags(rerun) == expected


def test_new_model_version_reembeds_and_says_so(sample, tmp_path, capfd):
    out = tmp_path / "out"
    first = run_scan(_cfg(sample["manifest"], sample["milvus"], out, "a"))
    assert first["rows_scanned"] == 10
    again = run_scan(_cfg(sample["manifest"], sample["milvus"], out, "b", store=StoreConfig(incremental=True)))
    assert (again["rows_scanned"], again["rows_reused"]) == (0, 10)

    fake = renamed_artifact("detector", "detector-next", tmp_path / "det")  # a retrained detector
    capfd.readouterr()
    s = run_scan(_cfg(sample["manifest"], sample["milvus"], out, "c", store=StoreConfig(incremental=True),
                      detector=DetectorConfig(artifact=fake)))
    assert (s["rows_scanned"], s["rows_reused"]) == (10, 0)
    assert s["store"]["key"].startswith("detector-next+") and s["store"]["other_keys"]
    assert "store.model_changed" in capfd.readouterr().err
    assert _flags(s) == _flags(first)  # same weights: same flags, only re-embedded


def test_incremental_on_s3_uses_head_not_get(sample, tmp_path, s3):
    """Catalog and store on S3: the second night reads no image (content keys from HEAD)."""
    s3.create_bucket(Bucket="inc-catalog")
    s3.create_bucket(Bucket="inc-out")
    upload_dir(s3, "inc-catalog", Path(sample["work"]) / "catalog", "images")
    rows = list({r["item_id"]: r for r in pq.read_table(sample["manifest"]).to_pylist()
                 if not r["item_id"].startswith("bad")}.values())  # no bad or duplicate rows
    for r in rows:
        r["image_uri"] = "s3://inc-catalog/images/" + Path(r["image_uri"]).name
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    cfg = _cfg(tmp_path / "m.parquet", sample["milvus"], "s3://inc-out/sweep", "s1",
               fetch=FetchConfig(allowed_roots=("s3://inc-catalog/",)))
    first = run_scan(cfg)
    assert first["rows_scanned"] == len(rows) and first["store"]["written"] == len(rows)
    from logoscan import storage
    gets = []
    real = storage.read_bytes
    storage.read_bytes = lambda uri, *a, **k: (gets.append(uri), real(uri, *a, **k))[1]
    try:
        second = run_scan(replace(cfg, run_id="s2", store=StoreConfig(incremental=True)))
    finally:
        storage.read_bytes = real
    assert (second["rows_scanned"], second["rows_reused"]) == (0, len(rows))
    assert not [u for u in gets if u.startswith("s3://inc-catalog/")]
    assert _flags(second) == _flags(first)


def test_cli_incremental_and_rematch(sample, tmp_path, capsys):
    from logoscan.cli import main
    base = ["--manifest", sample["manifest"], "--milvus-uri", sample["milvus"], "--out", str(tmp_path / "o"),
            "--engine", "local", "--set", "run_date=2026-11-23"]
    assert main(["scan", *base, "--run-id", "one"]) == 0
    assert main(["scan", *base, "--run-id", "two", "--incremental"]) == 0
    capsys.readouterr()
    s = json.loads((tmp_path / "o" / "runs" / "two" / "summary.json").read_text())
    assert s["rows_scanned"] == 0 and s["rows_reused"] == 10 and s["store"]["incremental"] is True
    # a store without entries for these models: a clear error, exit 2
    assert main(["rematch", "--store", str(tmp_path / "nothing"), "--milvus-uri", sample["milvus"],
                 "--out", str(tmp_path / "r")]) == 2
    assert "holds no entries" in capsys.readouterr().err
    assert main(["rematch", "--store", str(tmp_path / "o" / "store"), "--milvus-uri", sample["milvus"],
                 "--out", str(tmp_path / "r"), "--run-id", "rm"]) == 0
    r = json.loads((tmp_path / "r" / "runs" / "rm" / "summary.json").read_text())
    assert r["flagged"] == 0 and r["flagged_all"] == s["flagged"]  # the same gallery: nothing new


"""Property-based tests (hypothesis) of the invariants a user relies on, over inputs nobody
listed: any config either builds with every value in range or is one ConfigError; any manifest
either stops the run before any work (exit 2, nothing written) or publishes a run whose rows add
up, with nothing written outside --out, no traceback, and an exit code that says whether
anything was scanned."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logoscan import config_io
from logoscan.config import ScanConfig
from logoscan.config_io import ConfigError

# ------------------------------------------------------------------ configs

KEYS = ["detector.score_thresh", "detector.batch_size", "detector.device", "detector.precision",
        "fetch.max_pixels", "fetch.allowed_roots", "fetch.retries", "match.top_k", "checkpoint_every",
        "ocr.enabled", "ocr.languages", "policy.default_threshold", "policy.categories.brand.threshold",
        "policy.categories.brand.queue", "ray.fetch_batch", "ray.cpus_per_actor", "engine", "run_id",
        "max_error_rate", "carry_columns", "store.incremental"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**9), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.lists(st.text(max_size=6), max_size=3),
                   st.sampled_from(["auto", "cpu", "cuda:1", "bf16", "ray", "local", "yes", "nan", "/data/x"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_any_config_builds_in_range_or_is_one_config_error(overrides):
    data: dict = {}
    for k, v in overrides.items():
        config_io.set_dotted(data, k, v)
    try:
        cfg = config_io.build(ScanConfig, data)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    d = cfg.detector
    assert d.score_thresh is None or 0 <= d.score_thresh <= 1
    assert d.batch_size >= 1 and cfg.match.top_k >= 1 and cfg.fetch.max_pixels >= 1 and cfg.checkpoint_every >= 0
    assert cfg.engine in ("ray", "local") and isinstance(cfg.ocr.enabled, bool)
    assert all(isinstance(r, str) for r in cfg.fetch.allowed_roots) and isinstance(cfg.fetch.allowed_roots, tuple)
    for t in (cfg.policy.default_threshold, cfg.policy.for_category("brand").threshold):
        assert t is None or (math.isfinite(t) and 0 <= t <= 2)
    assert 0 <= cfg.max_error_rate <= 1 and cfg.ray.cpus_per_actor > 0


# ------------------------------------------------------------------ manifests through the sweep

@pytest.fixture(scope="module")
def playground(sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    cat = root / "catalog"
    cat.mkdir()
    src = pq.read_table(sample["manifest"]).column("image_uri")[0].as_py()
    shutil.copyfile(src, cat / "good.jpg")
    (cat / "notes.txt").write_text("not an image")
    os.symlink("/etc/hostname", cat / "link.jpg")
    return root


def _uris(cat: Path):
    return st.sampled_from([None, "", " ", str(cat / "good.jpg"), str(cat / "missing.jpg"), str(cat / "notes.txt"),
                            str(cat / "link.jpg"), "/etc/passwd", "../../etc/passwd", f"file://{cat}/good.jpg",
                            "s3://no-such-bucket/x.jpg", "http://169.254.169.254/", "ftp://x/y", "catalog/good.jpg"])


IDS = st.sampled_from([None, "", " ", "a", "b", "item-1", "ünï", "x" * 300])


@st.composite
def manifests(draw, cat: Path):
    n = draw(st.integers(0, 6))
    rows = [{"item_id": draw(IDS), "image_uri": draw(_uris(cat))} for _ in range(n)]
    cols = {"item_id": pa.array([r["item_id"] for r in rows], pa.string()),
            "image_uri": pa.array([r["image_uri"] for r in rows], pa.string())}
    if draw(st.booleans()):
        cols["image_id"] = pa.array([draw(st.sampled_from([None, "0", "1"])) for _ in rows], pa.string())
    if draw(st.booleans()):
        cols["extra"] = pa.array([draw(st.integers(-3, 3)) for _ in rows], pa.int64())
    broken = draw(st.sampled_from([None, None, None, "drop item_id", "int item_id", "rename image_uri"]))
    if broken == "drop item_id":
        cols.pop("item_id")
    elif broken == "int item_id":
        cols["item_id"] = pa.array(list(range(n)), pa.int64())
    elif broken == "rename image_uri":
        cols["uri"] = cols.pop("image_uri")
    return pa.table(cols), broken


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_any_manifest_ends_published_and_accounted_or_refused_before_any_work(sample, playground, data, capsys):
    from logoscan.cli import main
    table, broken = data.draw(manifests(playground / "catalog"))
    n = len(list(playground.glob("case-*")))
    case = playground / f"case-{n}"
    case.mkdir()
    pq.write_table(table, case / "m.parquet")
    out = case / "out"
    before = _tree(playground)
    cwd = os.getcwd()
    os.chdir(playground)  # a relative image_uri is relative to the working directory
    try:
        rc = main(["scan", "--manifest", str(case / "m.parquet"), "--milvus-uri", sample["milvus"],
                   "--out", str(out), "--engine", "local", "--run-id", "prop",
                   "--set", f"fetch.allowed_roots={playground / 'catalog'}", "--set", "fetch.retries=0"])
    finally:
        os.chdir(cwd)
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    written = {p for p in _tree(playground) - before if not p.startswith(f"case-{n}/out")}
    assert not written, written  # nothing outside --out
    if broken:
        assert rc == 2 and "logoscan: error:" in err and not out.exists()
        return
    assert rc in (0, 3), err
    s = json.loads((out / "runs" / "prop" / "summary.json").read_text())
    assert s["rows_in"] == table.num_rows == s["rows_scanned"] + s["rows_reused"] + s["rows_errored"]
    errors = pq.read_table(s["outputs"]["errors"]).num_rows
    assert errors == s["rows_errored"]
    assert (rc == 3) == (s["rows_in"] > 0 and s["rows_scanned"] + s["rows_reused"] == 0)
    for path in s["outputs"]["queues"].values():  # every flagged row names an item a reviewer can act on
        assert all(i and i.strip() for i in pq.read_table(path).column("item_id").to_pylist())

"""Faults: a run that dies is resumed, nothing is lost or shown twice, output commits whole.

Each test runs the real sweep (shipped models, Milvus Lite, Ray where it matters) on the sample
catalog and compares what reviewers would read with a clean run's."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logoscan.config import RayConfig, ScanConfig
from logoscan.pipeline import run_scan

ROOT = Path(__file__).resolve().parents[1]


def _manifest(sample, tmp_path, copies: int = 3) -> str:
    """The sample manifest (10 images + 3 bad rows) repeated under new item ids."""
    t = pq.read_table(sample["manifest"])
    parts = []
    for c in range(copies):
        ids = [f"{x}-c{c}" for x in t.column("item_id").to_pylist()]
        parts.append(t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(ids)))
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.concat_tables(parts), path)
    return str(path)


def _cfg(manifest, milvus, out, **kw) -> ScanConfig:
    return ScanConfig(manifest=manifest, milvus_uri=milvus, collection="logos", out=str(out),
                      run_id=kw.pop("run_id", "r1"), run_date="2026-11-23",
                      ray=kw.pop("ray", RayConfig(num_cpus=2, fetch_batch=2)), **kw)


def flags(summary) -> list[tuple]:
    """What reviewers read, without the per-run timestamp: one tuple per flagged region."""
    rows = []
    for path in summary["outputs"]["queues"].values():
        for r in pq.read_table(path).to_pylist():
            rows.append((r["item_id"], r["image_id"], tuple(round(v, 1) for v in r["box"]), r["label"],
                         r["logo_id"], round(r["distance"], 3)))
    return sorted(rows)


def errors(summary) -> list[tuple]:
    t = pq.read_table(summary["outputs"]["errors"]).to_pylist()
    return sorted((r["item_id"], r["stage"], r["error_type"]) for r in t)


@pytest.fixture(scope="module")
def clean(sample, tmp_path_factory):
    """A clean run of the 39-row manifest (the reference every fault is compared with)."""
    tmp = tmp_path_factory.mktemp("clean")
    manifest = _manifest(sample, tmp)
    return manifest, run_scan(_cfg(manifest, sample["milvus"], tmp / "out", engine="local"))


def _lite_copy(sample, tmp_path) -> str:
    """A private copy of the gallery: a Milvus Lite .db has one owner process at a time."""
    src = Path(sample["milvus"])
    dst = tmp_path / "gallery" / src.name  # Milvus Lite keeps a folder under the .db name
    shutil.copytree(src, dst)
    return str(dst)


def _start_and_kill(cmd, out, logfile, parts: int, env=None) -> None:
    """Start a sweep as its own process group; SIGKILL all of it once ``parts`` checkpoints exist."""
    with open(logfile, "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=logf, stderr=logf, env=env)
        found = out / "_checkpoints" / "r1" / "parts"
        deadline = time.time() + 240
        while time.time() < deadline and len(list(found.glob("*.parquet"))) < parts:
            if proc.poll() is not None:
                pytest.fail("the sweep ended before it could be killed:\n" + logfile.read_text()[-3000:])
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started die at once
        proc.wait()


def test_driver_killed_mid_run_resumes_without_duplicates_or_gaps(sample, clean, tmp_path):
    manifest, ref = clean
    milvus, out = _lite_copy(sample, tmp_path), tmp_path / "out"
    cmd = [sys.executable, "-m", "logoscan", "scan", "--manifest", manifest, "--milvus-uri", milvus,
           "--out", str(out), "--run-id", "r1", "--engine", "local", "--set", "run_date=2026-11-23",
           "--set", "checkpoint_every=2", "--set", "ray.fetch_batch=2"]
    _start_and_kill(cmd, out, tmp_path / "driver.log", parts=3)
    assert not (out / "runs" / "r1" / "_SUCCESS").exists() and not (out / "flagged").exists()

    resumed = run_scan(_cfg(manifest, milvus, out, engine="local", checkpoint_every=2))
    assert 0 < resumed["rows_resumed"] < ref["rows_in"] - 3  # 3 duplicate rows are never scanned
    assert resumed["rows_in"] == resumed["rows_scanned"] + resumed["rows_errored"] == ref["rows_in"]
    assert flags(resumed) == flags(ref) and len(set(flags(resumed))) == len(flags(resumed))
    assert errors(resumed) == errors(ref)
    assert not (out / "_checkpoints" / "r1").exists()  # published: nothing left to resume


def test_driver_killed_under_ray_resumes(sample, clean, tmp_path):
    """The same drill with the Ray engine (the nightly one): kill the driver, start it again."""
    manifest, ref = clean
    milvus, out = _lite_copy(sample, tmp_path), tmp_path / "out"
    cmd = [sys.executable, "-m", "logoscan", "scan", "--manifest", manifest, "--milvus-uri", milvus,
           "--out", str(out), "--run-id", "r1", "--engine", "ray", "--set", "run_date=2026-11-23",
           "--set", "checkpoint_every=2", "--set", "ray.fetch_batch=2", "--set", "ray.num_cpus=2",
           "--set", "match.search_batch=4"]  # the driver takes batches of this many regions
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    _start_and_kill(cmd, out, tmp_path / "driver.log", parts=2, env=env)
    resumed = run_scan(_cfg(manifest, milvus, out, engine="ray", checkpoint_every=2))
    assert 0 < resumed["rows_resumed"] < ref["rows_in"]
    assert flags(resumed) == flags(ref)
    assert errors(resumed) == errors(ref)


def test_checkpoint_of_other_settings_is_not_reused(sample, clean, tmp_path):
    from logoscan.checkpoint import Checkpoint
    manifest, ref = clean
    out = tmp_path / "out"
    stale = Checkpoint(str(out), "r1", "another-fingerprint")
    stale.start("2026-11-22")
    stale.write([{"key": ("x-c0", "x"), "image_uri": "/nowhere.jpg", "status": "scanned", "regions": 0,
                  "error": None, "flagged": []}])
    s = run_scan(_cfg(manifest, sample["milvus"], out, engine="local"))
    assert s["rows_resumed"] == 0 and s["run_date"] == "2026-11-23"
    assert flags(s) == flags(ref)

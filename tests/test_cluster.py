"""The sweep on a real Ray cluster, submitted as CI submits it: `ray start --head`, then
infra/ci/submit-sweep.sh (the script infra/ci/nightly-sweep.yml runs) through the Ray Jobs API,
then the outputs, the job's Prometheus metrics (Ray's metrics agent), a failing job failing the
script, and `ray stop`.

`ray stop` stops every Ray process on the machine: the session's own local Ray is shut down
first, and these tests (marker `cluster`) run after all others (tests/conftest.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"  # the same everywhere: head, submitter, job
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # this venv's `ray`
    env["LOGOSCAN_PYTHON"] = sys.executable  # the job's entrypoint: the python that has logoscan
    env.pop("RAY_ADDRESS", None)
    return env


class Scraper(threading.Thread):
    """Reads the metrics endpoint every second while the job runs; keeps the logoscan series."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.seen = url, threading.Event(), {}

    def run(self):
        while not self.stop.is_set():
            try:
                text = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                text = ""
            for line in text.splitlines():
                m = re.match(r"^(ray_logoscan_\w+)\{(.*)\} ([0-9.e+-]+)$", line)
                if m:
                    tags = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                    key = (m.group(1), tags.get("stage") or tags.get("status") or tags.get("queue") or "")
                    self.seen[key] = max(self.seen.get(key, 0.0), float(m.group(3)))
            self.stop.wait(1.0)


@pytest.fixture
def ray_head():
    import ray

    ray.shutdown()  # the session's local Ray: `ray stop` below would take it down anyway
    env = _env()
    ports = {"port": _free_port(), "dashboard": _free_port(), "metrics": _free_port()}
    start = subprocess.run(["ray", "start", "--head", f"--port={ports['port']}", "--num-cpus=2",
                            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={ports['dashboard']}", f"--metrics-export-port={ports['metrics']}",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield {"address": f"http://127.0.0.1:{ports['dashboard']}",
               "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics", "env": env}
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.cluster
def test_sweep_submitted_through_the_jobs_api_as_ci_does(ray_head, sample, tmp_path):
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"]}
    db = tmp_path / "milvus.db"
    # the gallery in a .db the job's driver will own (this process never opens it)
    subprocess.run([sys.executable, "-m", "logoscan", "gallery", "build", "--refs", sample["references"],
                    "--milvus-uri", str(db), "--collection", "logos"], env=env, check=True, capture_output=True,
                   timeout=300)
    config = {"manifest": sample["manifest"], "milvus_uri": str(db), "collection": "logos",
              "out": str(tmp_path / "out"), "engine": "ray", "run_date": "2026-11-23",
              "ray": {"fetch_batch": 4}, "policy": {"default_threshold": sample["meta"]["default_threshold"]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))

    scraper = Scraper(ray_head["metrics"])
    scraper.start()
    t0 = time.time()
    ok = subprocess.run(["bash", str(ROOT / "infra/ci/submit-sweep.sh"), str(tmp_path / "sweep.yaml"), "ci-1"],
                        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    time.sleep(3)  # one more scrape after the job
    scraper.stop.set()
    scraper.join()
    print(f"\nsubmitted sweep: {time.time() - t0:.1f} s; metrics seen: {sorted(scraper.seen)}")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "SUCCEEDED" in ok.stderr

    run = tmp_path / "out" / "runs" / "ci-1"
    assert (run / "_SUCCESS").exists()
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["rows_in"] == summary["rows_scanned"] + summary["rows_errored"] == 13
    assert summary["rows_scanned"] == 10 and summary["flagged"] > 0
    assert summary["config"]["engine"] == "ray"
    assert set(summary["stage_worker_seconds"]) >= {"fetch", "detect", "embed", "match"}
    flagged = sum(pq.read_table(p).num_rows for p in summary["outputs"]["queues"].values())
    assert flagged == summary["flagged"]
    # Prometheus-format metrics from the job's actors and driver, through Ray's metrics agent
    assert scraper.seen.get(("ray_logoscan_stage_rows_total", "detect"), 0) > 0
    assert scraper.seen.get(("ray_logoscan_stage_rows_total", "embed"), 0) > 0
    assert any(k[0] == "ray_logoscan_stage_batch_seconds_count" for k in scraper.seen)

    # a job that fails (its manifest is gone) fails the script, so CI fails with it
    config["manifest"] = str(tmp_path / "no-such-manifest.parquet")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(config))
    bad = subprocess.run(["bash", str(ROOT / "infra/ci/submit-sweep.sh"), str(tmp_path / "broken.yaml"), "ci-2"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode != 0
    assert "FAILED" in bad.stderr and "no-such-manifest" in bad.stdout + bad.stderr


TWO_NODES = r"""
import json, os, sys
import ray
from ray.cluster_utils import Cluster
from dataclasses import replace
from logoscan.config import PolicyConfig, RayConfig, RematchConfig, ScanConfig

args = json.loads(sys.argv[1])
# the driver's node has no CPU: every Ray Data task and actor runs on the worker node
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
try:
    from logoscan.sweep import run_rematch, run_scan
    ray_cfg = RayConfig(address=cluster.address, fetch_batch=4, matcher_actors=2)
    policy = PolicyConfig(default_threshold=args["threshold"])
    s = run_scan(ScanConfig(manifest=args["manifest"], milvus_uri=args["milvus"], out=args["out"], run_id="two-nodes",
                            run_date="2026-11-30", policy=policy, ray=ray_cfg))
    r = run_rematch(RematchConfig(store=os.path.join(args["out"], "store"), milvus_uri=args["milvus"],
                                  out=args["rematch_out"], run_id="two-nodes-rematch", run_date="2026-11-30",
                                  policy=policy, all_flags=True, ray=ray_cfg))
    nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    print("RESULT " + json.dumps({"scan": s["outputs"], "rematch": r["outputs"], "nodes": sorted(nodes.values()),
                                  "rows": [s["rows_in"], s["rows_scanned"], s["rows_reused"], s["rows_errored"]]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _flagged(outputs: dict) -> set:
    return {(r["item_id"], r["image_id"], tuple(round(v) for v in r["box"]), r["label"], r["logo_id"])
            for p in outputs["queues"].values() for r in pq.read_table(p).to_pylist()}


@pytest.mark.slow
@pytest.mark.cluster
def test_two_node_cluster_gives_the_single_node_flags(sample, tmp_path):
    """Two raylets on this machine (ray.cluster_utils.Cluster): the driver on a node with no CPU,
    fetch/detect/embed and a pool of two matcher actors on the other, the gallery's .db served
    on loopback for the run. Its scan and rematch flag exactly what the in-process engine flags."""
    import json
    import shutil

    import ray

    from logoscan.config import PolicyConfig, RematchConfig, ScanConfig
    from logoscan.gallery import release_lite
    from logoscan.sweep import run_rematch, run_scan

    ray.shutdown()  # the session's local Ray; the child process starts the two-node cluster
    release_lite(sample["milvus"])
    db = str(tmp_path / "gallery.db")
    shutil.copytree(sample["milvus"], db)
    policy = PolicyConfig(default_threshold=sample["meta"]["default_threshold"])
    single = run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=db, out=str(tmp_path / "single"),
                                 run_id="one-node", run_date="2026-11-30", engine="local", policy=policy))
    single_re = run_rematch(RematchConfig(store=str(tmp_path / "single" / "store"), milvus_uri=db,
                                          out=str(tmp_path / "single-rematch"), run_id="one-node-rematch",
                                          run_date="2026-11-30", engine="local", policy=policy, all_flags=True))
    release_lite(db)
    args = {"manifest": sample["manifest"], "milvus": db, "out": str(tmp_path / "two"),
            "rematch_out": str(tmp_path / "two-rematch"), "threshold": sample["meta"]["default_threshold"]}
    env = _env()
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-c", TWO_NODES, json.dumps(args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    two = json.loads(line[len("RESULT "):])
    assert two["nodes"] == [0, 2]  # the driver's CPU-less head and the worker node
    rows_in, scanned, reused, errored = two["rows"]
    assert rows_in == single["rows_in"] and rows_in == scanned + reused + errored
    assert _flagged(two["scan"]) == _flagged(single["outputs"]) and _flagged(single["outputs"])
    assert _flagged(two["rematch"]) == _flagged(single_re["outputs"]) and _flagged(single_re["outputs"])
    assert pq.read_table(two["scan"]["errors"]).num_rows == pq.read_table(single["outputs"]["errors"]).num_rows

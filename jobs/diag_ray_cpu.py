"""One-off diagnostic (not a benchmark table): CPU seconds per process during a Ray sweep.

    python jobs/diag_ray_cpu.py --images 600 [--set ray.fetch_batch=16 --set ray.worker_niceness=15 ...]

Makes (or reuses) a catalog of 800x800 JPEGs like jobs/bench_throughput.py's under --workdir,
builds the demo gallery in Milvus Lite, runs a small warm-up sweep, then one timed Ray sweep.
It prints the wall time, the summary's `stage_worker_seconds`, and the CPU seconds every process on
the machine used during the sweep (the detector and embedder actors, Ray's workers and daemons,
the driver). ``--timeline``: also, from Ray's own task events (``ray.timeline()``), when each
worker ran its first and last task during the sweep and how long it spent inside tasks (a model
actor's start-up, idle gaps and tail). docs/scaling.md quotes its output (the embedder inside the detector actor or in
its own, one or two detector actors); `ray.fetch_batch`'s comment in logoscan/config.py quotes it
for batches of 16, 64 and 128.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))


def cpu_by_process() -> dict:
    import psutil
    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        try:
            ct = p.info["cpu_times"]
            out[p.info["pid"]] = (p.info["name"], " ".join(p.info["cmdline"] or [])[:70], ct.user + ct.system)
        except Exception:  # noqa: BLE001 - a process that ended meanwhile
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workdir", default="build/diag-ray-cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ScanConfig overrides")
    ap.add_argument("--timeline", action="store_true",
                    help="also print, from ray.timeline(), when each process ran its tasks during the sweep")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_throughput import make_catalog
    from logoscan import config_io
    from logoscan.config import PolicyConfig, ScanConfig
    from logoscan.log import configure
    from logoscan.sweep import init_ray, run_scan

    work = Path(a.workdir)
    manifest = work / f"manifest-{a.images}.parquet"
    if not manifest.exists():
        rows = make_catalog(work, a.images)
        pq.write_table(pa.Table.from_pylist(rows), manifest)
        pq.write_table(pa.Table.from_pylist(rows[:32]), work / "warm.parquet")
    configure(level="WARNING")
    db = str(work / "milvus.db")
    cfg = config_io.with_overrides(ScanConfig(manifest=str(manifest), milvus_uri=db, collection="g",
                                              out=str(work / "out"), run_date="2026-11-23", engine="ray",
                                              policy=PolicyConfig(default_threshold=0.5)), a.set)
    init_ray(cfg.ray)  # before any Milvus client; as --set ray.* asks (ray.worker_niceness=15: Ray's own)
    if not Path(db).exists():
        from logoscan.demo import demo_gallery, write_references
        from logoscan.gallery import build
        from logoscan.models import default_artifact_path, load_artifact
        model, emb_cfg = load_artifact(default_artifact_path("embedder"))
        build(write_references(work, demo_gallery()), db, "g", model, emb_cfg)
    run_scan(replace(cfg, run_id="warm", manifest=str(work / "warm.parquet"), out=str(work / "out-warm")))

    before, t0 = cpu_by_process(), time.time()
    s = run_scan(replace(cfg, run_id="diag"))
    wall, after = time.time() - t0, cpu_by_process()
    print(f"{a.images} images, {wall:.1f} s, {a.images / wall:.2f} images/s, overrides {a.set}")
    print(f"stage_worker_seconds {s['stage_worker_seconds']}")
    used = sorted(((t - before.get(pid, (0, 0, 0))[2], name, cmd) for pid, (name, cmd, t) in after.items()),
                  reverse=True)
    for secs, name, cmd in used[:12]:
        if secs > 0.3:
            print(f"{secs:7.1f} CPU-s  {name:24s} {cmd}")
    if a.timeline:
        print_timeline(t0, t0 + wall)
    return 0


def print_timeline(t0: float, t1: float) -> None:
    """Per worker process, from Ray's own task events: its tasks' names, the first start and last end
    (seconds from the sweep's call), and the seconds inside tasks: a model actor's idle start and tail."""
    import ray
    events = [e for e in ray.timeline() if e.get("ph") == "X" and "dur" in e]
    # timeline timestamps are microseconds since the epoch
    events = [e for e in events if t0 * 1e6 <= e["ts"] <= t1 * 1e6]
    by: dict = {}
    for e in events:
        by.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    print(f"timeline: {len(events)} task events in the sweep's {t1 - t0:.1f} s")
    rows = []
    for key, es in by.items():
        # the task's own phases nest inside its span: count the execute phase only
        ex = [e for e in es if e.get("name") == "task:execute"] or es
        first = min(e["ts"] for e in ex) / 1e6 - t0
        last = max(e["ts"] + e["dur"] for e in ex) / 1e6 - t0
        busy = sum(e["dur"] for e in ex) / 1e6
        ex = sorted(ex, key=lambda e: e["ts"])
        gap = max(((b["ts"] - a_["ts"] - a_["dur"]) / 1e6 for a_, b in zip(ex, ex[1:])), default=0.0)
        names = sorted({str(e.get("cat", "?"))[:30] for e in es})
        rows.append((busy, str(key[1])[:20], len(ex), first, last, gap, ", ".join(names)[:60]))
    print(f"{'worker':20s} {'executes':>8s} {'first':>6s} {'last end':>8s} {'busy s':>7s} {'longest gap':>11s}  categories")
    for busy, key, n, first, last, gap, names in sorted(rows, reverse=True)[:10]:
        print(f"{key:20s} {n:8d} {first:6.1f} {last:8.1f} {busy:7.1f} {gap:11.1f}  {names}")


if __name__ == "__main__":
    sys.exit(main())

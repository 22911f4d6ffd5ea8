"""The driver's peak memory against the manifest's size (issue #21's first bar: within 1.2x from
100k to 2M rows).

  python jobs/bench_driver_memory.py --rows 100000,2000000 --write docs/bench/driver_memory.md

Each size is a manifest whose images are all refused (outside the allowed roots) or missing, half
and half, plus 1% duplicate rows: the workers only read, validate, dedup and write error rows, so
what grows is what the driver holds per row. Each size runs as its own process (peak RSS is a
process's lifetime high): a Ray sweep (local Ray, Milvus Lite served for the run, store off) of
the demo gallery. Reported: the driver's peak RSS (VmHWM), the rows accounted for, seconds
per million rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(rows: int, work: Path, db: str, fetch_batch: int = 128) -> dict:
    """Runs in its own process (the parent wrote the manifest): sweep it, report."""
    from logoscan.config import FetchConfig, PolicyConfig, RayConfig, ScanConfig, StoreConfig
    from logoscan.log import configure
    from logoscan.sweep import init_ray, run_scan

    init_ray(RayConfig())
    configure(level="WARNING")
    phases = _mark_phases()
    manifest = work / f"manifest-{rows}.parquet"
    rss0 = _status_kb("VmRSS")
    t0 = time.time()
    s = run_scan(ScanConfig(manifest=str(manifest), milvus_uri=db, out=str(work / f"out-{rows}"), run_id=f"m{rows}",
                            run_date="2026-11-30", policy=PolicyConfig(default_threshold=0.5),
                            fetch=FetchConfig(allowed_roots=(str(work / "images"),)),
                            store=StoreConfig(write=False), ray=RayConfig(fetch_batch=fetch_batch)))
    secs = time.time() - t0
    return {"rows": rows, "rows_in": s["rows_in"], "scanned": s["rows_scanned"], "errored": s["rows_errored"],
            "errors_by_stage": s["errors_by_stage"], "seconds": round(secs, 1),
            "stage_seconds": s["stage_seconds"], "streaming": s.get("streaming", False),
            "s_per_million": round(secs / rows * 1e6, 1),
            "rss_before_mb": round(rss0 / 1024), "peak_rss_mb": round(_status_kb("VmHWM") / 1024), **phases}


def _mark_phases() -> dict:
    """Where the peak is reached: the driver's peak RSS when Ray Data's execution ends (before
    publishing) and its RSS after publishing the parts. Wraps the two calls of this process only."""
    from logoscan.sweep import stream
    marks: dict = {}

    def wrap(name, fn):
        def inner(*a, **k):
            try:
                return fn(*a, **k)
            finally:
                marks[f"{name}_peak_mb"] = round(_status_kb("VmHWM") / 1024)
                for field in ("VmRSS", "RssAnon", "RssShmem"):  # heap, or pages of Ray's object store
                    marks[f"{name}_{field.lower()}_mb"] = round(_status_kb(field) / 1024)
        return inner

    stream.run = wrap("executed", stream.run)
    stream.publish_parts = wrap("published", stream.publish_parts)
    return marks


def _status_kb(field: str) -> int:
    """This process's own memory (kB) from /proc/self/status. Not getrusage's ru_maxrss: Linux
    carries that across fork + exec, so a child started by a parent holding a 2M-row manifest
    began with the parent's 1.4 GB as its "peak"."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,2000000")
    ap.add_argument("--workdir", default="build/bench-driver-memory")
    ap.add_argument("--write")
    ap.add_argument("--fetch-batch", type=int, default=128, help="images per block (ray.fetch_batch)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(a.workdir)
    db = str(work / "milvus.db")
    if a.one:
        print("RESULT " + json.dumps(one(a.one, work, db, a.fetch_batch)), flush=True)
        return 0
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    from logoscan.demo import demo_gallery, write_references
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    model, cfg = load_artifact(default_artifact_path("embedder"))
    build(write_references(work, demo_gallery()), db, "logos", model, cfg)
    from logoscan.gallery import release_lite
    release_lite(db)  # each size's process serves the .db itself
    import pyarrow as pa
    import pyarrow.parquet as pq
    results = []
    for n in (int(x) for x in a.rows.split(",")):
        n_dup = n // 100
        ids = [f"item-{i:09d}" for i in range(n - n_dup)]
        uris = [f"/etc/refused-{i}.jpg" if i % 2 else str(work / "images" / f"missing-{i}.jpg")
                for i in range(n - n_dup)]
        pq.write_table(pa.table({"item_id": ids + ids[:n_dup], "image_uri": uris + uris[:n_dup]}),
                       work / f"manifest-{n}.parquet", row_group_size=100_000)
        del ids, uris
        p = subprocess.run([sys.executable, __file__, "--one", str(n), "--workdir", str(work),
                            "--fetch-batch", str(a.fetch_batch)], capture_output=True,
                           text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode or not line:
            print(p.stdout[-2000:], p.stderr[-4000:])
            return 1
        r = json.loads(line[7:])
        print(r, flush=True)
        results.append(r)
    base = results[0]["peak_rss_mb"]
    lines = ["# The driver's peak memory against the manifest's size", "",
             f"`python jobs/bench_driver_memory.py --rows {a.rows} --write docs/bench/driver_memory.md`, on this "
             "project's 2-core CPU machine, Ray engine on local Ray, the demo gallery in Milvus Lite served for the "
             "run, store off. Every image refused (outside the allowed roots) or missing, half and half, plus 1% "
             "duplicate rows: only reading, validating, dedup and error rows. Peak RSS of the driver process "
             "(VmHWM of /proc/self/status; `before`: VmRSS after imports and Ray's start).", "",
             f"Blocks of {a.fetch_batch} images (`ray.fetch_batch`). `executed`: the driver when Ray Data's execution "
             "has ended (peak; anonymous / object-store pages of its RSS); the peak after it is publishing.", "",
             "| manifest rows | rows in | scanned | errored | seconds | s per million rows | driver RSS before MB "
             "| executed: peak MB (anon / shmem) | driver peak RSS MB | vs smallest |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['rows_in']:,} | {r['scanned']:,} | {r['errored']:,} | {r['seconds']} | "
                     f"{r['s_per_million']} | {r['rss_before_mb']:,} | {r.get('executed_peak_mb', 0):,} "
                     f"({r.get('executed_rssanon_mb', 0):,} / {r.get('executed_rssshmem_mb', 0):,}) | {r['peak_rss_mb']:,} | "
                     f"{r['peak_rss_mb'] / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:  # the generated part only: the doc's dated sections stay
        from jobs.benchdoc import write_report
        write_report(a.write, text, "jobs/bench_driver_memory.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One-off diagnostic (not a benchmark table): is the model slower inside a Ray actor than in a plain
process, on the same pre-decoded images?

    python jobs/diag_actor_model.py [--images 48] [--rounds 2] [--threads 1]

jobs/bench_throughput.py's model floor runs the detector and embedder in spawned processes; the
sweep runs them in Ray actors, and docs/bench/throughput.md measured ~94 CPU-ms per image there
against 72-80 in the floor. This runs bench_throughput's own floor loop (`_floor_loop`: decode
first, then detect + crop + embed, timed) alternately in a spawned process and in a Ray actor
started by `init_ray` from the default config, one at a time, and prints ms per image and the
CPU-ms per image each used. Same images, same code, same threads: what differs is the process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))


def timed_loop(uris, threads):
    """(images, wall seconds of the timed loop, CPU seconds of this process in it, pid, torch threads,
    niceness). The floor loop sets the allocator as the detector actors do (logoscan.models.alloc)."""
    import resource
    sys.path.insert(0, str(ROOT / "jobs"))  # a Ray worker has the driver's cwd on its path, not jobs/
    import torch

    from bench_throughput import _floor_loop
    from logoscan.config import DetectorConfig
    torch.set_num_threads(threads)
    before = [0.0]

    class Mark:  # _floor_loop waits on this right before its timed loop starts
        def wait(self):
            r = resource.getrusage(resource.RUSAGE_SELF)
            before[0] = r.ru_utime + r.ru_stime
    n, t0, t1 = _floor_loop(uris, DetectorConfig(), threads, Mark())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return n, t1 - t0, r1.ru_utime + r1.ru_stime - before[0], os.getpid(), torch.get_num_threads(), os.nice(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="build/diag-ray-cpu")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import multiprocessing as mp

    import pyarrow.parquet as pq
    import ray

    from bench_throughput import make_catalog
    from logoscan.config import ScanConfig
    from logoscan.sweep import init_ray

    work = Path(a.workdir)
    have = sorted(work.glob("manifest-*.parquet"))
    rows = pq.read_table(have[0]).to_pylist() if have else make_catalog(work, a.images)
    uris = [r["image_uri"] for r in rows[:a.images]]
    init_ray(ScanConfig().ray)
    Actor = ray.remote(num_cpus=a.threads)(type("ModelLoop", (), {"run": staticmethod(timed_loop)}))
    actor = Actor.remote()
    ray.get(actor.run.remote(uris[:4], a.threads))  # imports and first load, not timed
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(timed_loop, (uris[:4], a.threads))
        print(f"{len(uris)} images, {a.threads} torch thread(s); ms per image (wall / CPU)")
        for r in range(a.rounds):
            for where in ("process", "ray actor") if r % 2 == 0 else ("ray actor", "process"):
                if where == "process":
                    n, wall, cpu, pid, th, nice = pool.apply(timed_loop, (uris, a.threads))
                else:
                    n, wall, cpu, pid, th, nice = ray.get(actor.run.remote(uris, a.threads))
                print(f"round {r + 1}  {where:10s} pid {pid:7d} threads {th} nice {nice}: "
                      f"{1000 * wall / n:6.1f} / {1000 * cpu / n:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

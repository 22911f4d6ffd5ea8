"""One-off diagnostic (not a benchmark table): why a matcher actor pool once hung the sweep on a
2-CPU node (README "Known limits"), reproduced with Ray Data alone, no models and no Milvus.

    python jobs/diag_matcher_pool.py

The sweep's shape on local Ray with 2 CPUs: fetch tasks (0.25 CPU) → a detector actor → an
embedder actor → a matcher actor. Each case runs in a fresh Ray and must hand back every row
within --timeout seconds, or it counts as hung. The cases:
  - model actors 0.5 CPU each, the matcher's num_cpus not given (Ray Data reserves 1 CPU for
    it): the first attempt;
  - model actors 0.5 each, matcher 0.25 (ray.matcher_cpus) but not counted by the sweep's rule;
  - the sweep's rule now (logoscan.sweep.engines.actor_cpus): the model actors' reservation is
    lowered until FREE_FOR_RAY_DATA (1 CPU) stays free beside fetch and the matchers.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time


def _case(model_cpus: float, matcher_cpus, rows: int, q) -> None:
    import numpy as np
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False

    class Stage:
        def __call__(self, b):
            time.sleep(0.01)
            return b

    ds = ray.data.from_items([{"i": i} for i in range(rows)]).repartition(rows // 64)
    ds = ds.map_batches(lambda b: b, batch_size=64, num_cpus=0.25)
    ds = ds.map_batches(Stage, batch_size=64, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=model_cpus)
    ds = ds.map_batches(Stage, batch_size=64, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=model_cpus)
    kw = {} if matcher_cpus is None else {"num_cpus": matcher_cpus}
    ds = ds.map_batches(Stage, batch_size=64, compute=ray.data.ActorPoolStrategy(size=1), **kw)
    n = sum(len(b["i"]) for b in ds.iter_batches(batch_size=None))
    q.put(int(np.asarray(n)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--timeout", type=float, default=90.0)
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from logoscan.config import RayConfig
    from logoscan.sweep.engines import actor_cpus
    rule = actor_cpus(RayConfig(cpus_per_actor=0.5, matcher_cpus=0.25), 2, 2.0, matchers=1)
    for model, cpus in ((0.5, None), (0.5, 0.25), (rule, 0.25)):
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_case, args=(model, cpus, a.rows, q))
        t0 = time.time()
        p.start()
        p.join(a.timeout)
        hung = p.is_alive()
        if hung:
            p.kill()
            p.join()
            os.system("ray stop --force >/dev/null 2>&1")
        got = None if hung else q.get(timeout=5)
        free = 2 - 0.25 - 2 * model - (1.0 if cpus is None else cpus)
        print(f"model actors {model} CPU each, matcher {'not given (1)' if cpus is None else cpus}, "
              f"{free:.2f} CPU left free: "
              f"{'HUNG: no result after %.0f s' % a.timeout if hung else f'{got} of {a.rows} rows in {time.time() - t0:.1f} s'}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

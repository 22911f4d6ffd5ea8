"""One-off diagnostic (not a benchmark table): does a Ray Data actor pool run its actors at the
same time on this 2-CPU machine? No Milvus, no models: each "matcher" sleeps 0.05 s per batch.

    python jobs/diag_actor_pool_scaling.py --parts 200
    python jobs/diag_actor_pool_scaling.py --parts 25

The shape of `rematch` on the Ray engine before the streaming sweep: one block per store
part (60,000 rows in all), a generator task that yields each part (fused by Ray Data into the
actors), then an actor pool of 1 or 2 (0.25 CPU each) with batches of 512 rows or whole blocks.
With two actors working at once, the time would halve. Measured on 2026-11-30 (seconds, 1 / 2
actors): 200 parts, batches of 512: 7.3 / 7.2; whole blocks: 12.1 / 8.8. 25 parts, batches of
512: 7.3 / 7.1; whole blocks: 2.3 / 2.0. The sleeps alone take 5.9 s (batches of 512) and
10.0 / 1.25 s (whole blocks). docs/bench/matcher.md shows the same flat line with Milvus.

2026-12-01, whole blocks, 200 parts (one-off runs with the driver's and every process's CPU time
read by psutil): the processes were nearly idle (the driver 1.5-3 CPU-s, each actor 2-3 CPU-s in
10-15 s), so the pool does not wait for CPU. One actor took 13.3-14.9 s for 10 s of sleeps, about
20 ms more per block, and two actors 8.1-11.5 s, as if that per-block cost were paid one block at
a time. `--inflight 4`, `8` and `16` gave two actors 7.7-9.1 s against 10.1-11.5 with the
default and `--inflight 1`/`2`: more tasks queued on each actor hide some of it. Not applied to
the matcher pool: there the 2 cores are busy with the shuffle and the part reads
(docs/bench/matcher.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--inflight", type=int, default=None,
                    help="ActorPoolStrategy(max_tasks_in_flight_per_actor=...); default: Ray Data's")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import numpy as np
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    per = a.rows // a.parts

    def read(items):
        for _ in items["part"]:
            yield {"x": np.zeros(per)}

    class Matcher:
        def __call__(self, b):
            time.sleep(0.05)
            return b

    for label, bs in (("batches of 512 rows", 512), ("whole blocks", None)):
        for k in (1, 2):
            ds = ray.data.from_items([{"part": i} for i in range(a.parts)], override_num_blocks=a.parts)
            ds = ds.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.25)
            ds = ds.map_batches(Matcher, batch_size=bs, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=k, max_tasks_in_flight_per_actor=a.inflight),
                                num_cpus=0.25)
            t = time.time()
            n = sum(len(b["x"]) for b in ds.iter_batches(batch_size=None))
            print(f"{a.parts} parts, {label}, {k} actor(s): {n} rows in {time.time() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

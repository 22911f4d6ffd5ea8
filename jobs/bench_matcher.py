"""Matching throughput: the driver's single client against a Ray Data pool of matcher actors.

  python jobs/bench_matcher.py --regions 200000 --write docs/bench/matcher.md   (make bench-matcher)

A small sweep (the demo's generator, the shipped models, Ray engine) fills an embedding store;
its stored regions are copied under other item ids until the store holds at least --regions
regions, in parts of --part-images images (a scan writes parts of `checkpoint_every` = 256).
Then `rematch` matches the whole store against the demo gallery plus --distractors random
references (HNSW), once per way of matching:

  - local: the driver reads the parts and searches the embedded Milvus Lite .db in-process (the
    path every run took before issue #21);
  - ray, 0 matcher actors: as local (the driver matches; nothing is served);
  - ray, 1 / 2 / 4 matcher actors: Ray Data tasks read the parts, a matcher actor pool searches
    the served .db; the driver only counts and collects flags.

Every way must give the same flags (compared by item, image, region, label, logo).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class CpuSampler(threading.Thread):
    """CPU seconds per kind of process while a run goes (the served milvus-lite exits with its
    run, so it is sampled while alive): milvus-lite server, matcher actors, other Ray workers, the
    driver."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[str, float, float]] = {}
        self.stop = threading.Event()

    @staticmethod
    def kind(cmd: str, pid: int) -> str | None:
        if pid == os.getpid():
            return "driver"
        if "milvus_lite" in cmd and " server" in cmd or "milvus run" in cmd or "/etcd" in cmd:
            return "Milvus server"
        if "MatchActor" in cmd:
            return "matcher actors"
        if cmd.startswith("ray::") or "raylet" in cmd or "gcs_server" in cmd:
            return "other Ray processes"
        return None

    def sample(self) -> None:
        import psutil
        for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                k = self.kind(cmd, p.info["pid"])
                if k is None:
                    continue
                t = p.info["cpu_times"].user + p.info["cpu_times"].system
                first = self.seen.get(p.info["pid"], (k, t, t))[1]
                self.seen[p.info["pid"]] = (k, first, t)
            except Exception:  # noqa: BLE001 - a process that ended meanwhile
                pass

    def run(self) -> None:
        self.sample()
        while not self.stop.wait(0.5):
            self.sample()

    def totals(self) -> dict:
        self.stop.set()
        self.join()
        self.sample()
        out: dict[str, float] = {}
        for k, first, last in self.seen.values():
            out[k] = out.get(k, 0.0) + last - first
        return out


def flags(summary) -> set:
    return {(r["item_id"], r["image_id"], tuple(round(v) for v in r["box"]), r["label"], r["logo_id"])
            for p in summary["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="images swept to fill the store")
    ap.add_argument("--regions", type=int, default=200_000, help="stored regions to match, at least")
    ap.add_argument("--part-images", type=int, default=256)
    ap.add_argument("--distractors", type=int, default=10_000)
    ap.add_argument("--actors", default="1,2,4")
    ap.add_argument("--inflight", default="default",
                    help="comma list of ray.matcher_tasks_in_flight values to run for each actor count "
                         "('default': Ray Data's own), e.g. default,4")
    ap.add_argument("--no-driver-rows", action="store_true", help="skip the two ways where the driver matches")
    ap.add_argument("--workdir", default="build/bench-matcher")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--milvus-uri", help="a Milvus server (http://host:port) instead of an embedded .db")
    ap.add_argument("--write", help="write the table (markdown) here")
    a = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from logoscan.config import PolicyConfig, RayConfig, RematchConfig, ScanConfig
    from logoscan.demo import make_sample_data
    from logoscan.gallery import add_distractors, build, release_lite
    from logoscan.log import configure
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.sweep import init_ray, run_rematch, run_scan
    from logoscan.store import Store

    init_ray(RayConfig(num_cpus=a.num_cpus))  # before any Milvus client (gRPC threads break Ray's fork)
    configure(level="WARNING")
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    paths = make_sample_data(work / "data", n_images=a.images, seed=11)
    model, emb_cfg = load_artifact(default_artifact_path("embedder"))
    db = a.milvus_uri or str(work / "milvus.db")
    served = not a.milvus_uri
    meta = build(paths["references"], db, "logos", model, emb_cfg, index_type="HNSW")
    add_distractors(db, "logos", a.distractors, meta["dim"])
    release_lite(db)  # the runs below serve it (or open it) themselves
    policy = PolicyConfig(default_threshold=meta["default_threshold"])
    t0 = time.time()
    s = run_scan(ScanConfig(manifest=paths["manifest"], milvus_uri=db, out=str(work / "sweep"), run_id="fill",
                            run_date="2026-11-30", policy=policy, ray=RayConfig(num_cpus=a.num_cpus)))
    print(f"sweep of {s['rows_in']} images: {time.time() - t0:.0f} s, {s['regions']} regions", flush=True)

    src = Store.folders(str(work / "sweep" / "store"))[0]
    parts = [pq.read_table(f) for f in src.region_files()]  # one sweep: every image once
    t = pa.concat_tables(parts)
    images = sorted(set(zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist())))
    sweep_regions = sum(1 for r in t.column("region").to_pylist() if r >= 0)
    copies = -(-a.regions // max(1, sweep_regions))
    big = work / "store" / src.dir.rsplit("/", 1)[-1] / "regions"
    big.mkdir(parents=True)
    shutil.copy(os.path.join(src.dir, "_key.json"), big.parent / "_key.json")

    def copy(p: pa.Table, c: int) -> pa.Table:
        return p.set_column(0, "item_id", pa.array([f"{x}-c{c}" for x in p.column("item_id").to_pylist()]))
    n = 0
    for p in parts:  # a part holds whole images: k copies of one sweep part, about --part-images images
        per = len(set(p.column("item_id").to_pylist()))
        k = max(1, a.part_images // max(per, 1))
        for c0 in range(0, copies, k):
            part = pa.concat_tables([copy(p, c) for c in range(c0, min(c0 + k, copies))])
            pq.write_table(part, big / f"part-{n:05d}.parquet")
            n += 1
    stored_regions = sweep_regions * copies
    print(f"store: {len(images) * copies:,} images, {t.num_rows * copies:,} rows ({stored_regions:,} regions), "
          f"{n} parts", flush=True)

    base = RematchConfig(store=str(work / "store"), milvus_uri=db, out=str(work / "rematch"),
                         run_date="2026-11-30", policy=policy, all_flags=True)
    ways = [("local: the driver searches the .db in-process" if served else "local: the driver searches the server",
             replace(base, engine="local")),
            ("ray engine, 0 matcher actors: the driver searches the .db in-process (no server)" if served else
             "ray engine, 0 matcher actors: the driver searches the server",
             replace(base, ray=RayConfig(num_cpus=a.num_cpus, matcher_actors=0)))]
    if a.no_driver_rows:
        ways = []
    inflight = [None if x == "default" else int(x) for x in a.inflight.split(",")]
    ways += [(f"ray, {k} matcher actor{'s' if k > 1 else ''}" + (f", {q} blocks in flight each" if q else ""),
              replace(base, ray=RayConfig(num_cpus=a.num_cpus, matcher_actors=k, matcher_tasks_in_flight=q)))
             for k in (int(x) for x in a.actors.split(",")) for q in inflight]
    rows, ref = [], None
    for i, (name, cfg) in enumerate(ways):
        cpu = CpuSampler()
        cpu.start()
        t0 = time.time()
        r = run_rematch(replace(cfg, run_id=f"m{i}", out=str(work / f"rematch-{i}")))
        wall = time.time() - t0
        r["cpu"] = cpu.totals()
        f = flags(r)
        ref = f if ref is None else ref
        rows.append((name, r, wall, f == ref))
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["cpu"].items())), flush=True)
        print(f"{name}: {r['regions']:,} regions, matching {r['stage_seconds']['stored_match']:.1f} s = "
              f"{r['regions_per_s']:,} regions/s, command {wall:.1f} s, flags {len(f):,} same={f == ref}",
              flush=True)
        release_lite(db)

    one = next((r["regions_per_s"] for name, r, _, _ in rows if name == "ray, 1 matcher actor"), None)
    lines = [
        "# Matching throughput: the driver's client vs a matcher actor pool",
        "",
        f"`python jobs/bench_matcher.py --regions {a.regions}"
        f"{' --num-cpus ' + str(a.num_cpus) if a.num_cpus else ''}"
        f"{' --distractors ' + str(a.distractors) if a.distractors != 10_000 else ''}"
        f"{' --milvus-uri ' + a.milvus_uri if a.milvus_uri else ''}"
        f"{' --actors ' + a.actors if a.actors != '1,2,4' else ''}"
        f"{' --inflight ' + a.inflight if a.inflight != 'default' else ''}"
        f"{' --no-driver-rows' if a.no_driver_rows else ''}"
        " --write docs/bench/matcher.md` (`make bench-matcher`), on this project's 2-core CPU machine (no "
        f"GPU), local Ray. `rematch` of a store of {len(images) * copies:,} images ({stored_regions:,} regions; "
        f"the regions of a {a.images}-image demo sweep copied {copies} times under other item ids, parts of "
        f"about {a.part_images} images) against the demo gallery plus {a.distractors:,} random references, "
        + ("HNSW, Milvus Lite (served on 127.0.0.1 by `milvus-lite server` for the rows with matcher actors). " if served
           else f"HNSW, on the Milvus server at {a.milvus_uri} (the same machine). ") + "`matching s` is "
        "the matching loop (read the parts, search in batches of 512, decide, hand back); the command adds "
        "the store's index, the gallery's metadata, serving the .db and writing queues and ledger.",
        "",
        "| how | regions | matching s | regions/s | vs 1 actor | command s | flags | same flags | "
        "CPU s: Milvus server / matcher actors / other Ray / driver |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, wall, same in rows:
        rel = f"{r['regions_per_s'] / one:.2f}x" if one else "–"
        c = r["cpu"]
        cpu = " / ".join(f"{c.get(k, 0.0):.0f}" for k in ("Milvus server", "matcher actors",
                                                            "other Ray processes", "driver"))
        lines.append(f"| {name} | {r['regions']:,} | {r['stage_seconds']['stored_match']:.1f} | "
                     f"{r['regions_per_s']:,} | {rel} | {wall:.1f} | {r['flagged_all']:,} | {same} | {cpu} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:  # the generated part only: the doc's dated sections stay
        from jobs.benchdoc import write_report
        write_report(a.write, text, "jobs/bench_matcher.py")
    return 0 if all(same for *_, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fault drills on a synthetic catalog, through the Ray engine: print (and --write) a table of
what each fault did to the run, compared with a clean run of the same catalog.

  python jobs/drill_reliability.py --images 300 --write docs/bench/reliability.md

Drills: a detector actor SIGKILLed at ~50%; the driver (and its local Ray) SIGKILLed at ~50%
and the run started again with the same run id; S3 answering 503 SlowDown to half of all image
GETs; a Milvus server unreachable for 10 s mid-run. Needs the dev extra (moto's S3 server).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(summary) -> list[tuple]:
    """(item, image, box, label) of each flagged region; the drills write outputs locally."""
    return sorted((r["item_id"], r["image_id"], tuple(round(v) for v in r["box"]), r["label"])
                  for path in summary["outputs"]["queues"].values() for r in pq.read_table(path).to_pylist())


def compare(s, ref) -> dict:
    f, g = flags(s), flags(ref)
    dup = sum(c - 1 for c in Counter(f).values() if c > 1)
    return {"rows_in": s["rows_in"], "rows_out": s["rows_scanned"] + s["rows_errored"],
            "flags": len(f), "duplicates": dup, "missing_vs_clean": len(set(g) - set(f)),
            "extra_vs_clean": len(set(f) - set(g))}


def checkpointed(parts: Path) -> int:
    """Finished images in a run's checkpoint parts."""
    n = 0
    for f in parts.glob("*.parquet"):
        try:
            n += pq.read_table(f, columns=["record"]).column("record").to_pylist().count("image")
        except Exception:  # noqa: BLE001 - a part being renamed into place
            pass
    return n


def when_done(out: Path, run_id: str, images: int, every: int, then) -> threading.Thread:
    """Call ``then`` once the run's checkpoint holds ``images`` finished images."""
    def go():
        parts = out / "_checkpoints" / run_id / "parts"
        while checkpointed(parts) < images:
            time.sleep(0.05)
        then()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--every", type=int, default=16, help="checkpoint_every")
    ap.add_argument("--workdir", default="build/drill-reliability")
    ap.add_argument("--write", help="also write the table to this Markdown file")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # S3 (moto) behind a proxy that can throttle; in the environment before Ray starts
    from moto.server import ThreadedMotoServer

    from logoscan.drills import FlakyS3, TcpGate
    moto_port = _port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    flaky = FlakyS3(f"http://127.0.0.1:{moto_port}", every=0, match="/catalog/")
    os.environ.update({"AWS_ENDPOINT_URL": flaky.url, "AWS_ACCESS_KEY_ID": "drill",
                       "AWS_SECRET_ACCESS_KEY": "drill", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})

    from logoscan.config import MatchConfig, RayConfig, ScanConfig
    from logoscan.demo import make_sample_data
    from logoscan.gallery import build
    from logoscan.log import configure
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.sweep import init_ray, run_scan
    configure(level="WARNING")
    init_ray(RayConfig(num_cpus=2))  # before any Milvus client: gRPC threads break the Ray head's fork
    t0 = time.time()
    paths = make_sample_data(work / "data", n_images=a.images, seed=11)
    model, ecfg = load_artifact(default_artifact_path("embedder"))
    db = str(work / "milvus.db")
    build(paths["references"], db, "logos", model, ecfg)
    print(f"catalog of {a.images} images + 3 bad rows, gallery built: {time.time() - t0:.0f} s", flush=True)

    def cfg(manifest, milvus, out, run_id="drill", **kw):
        return ScanConfig(manifest=manifest, milvus_uri=milvus, collection="logos", out=str(out), run_id=run_id,
                          run_date="2026-11-23", engine="ray", checkpoint_every=a.every,
                          match=kw.pop("match", MatchConfig(search_batch=16)),
                          ray=RayConfig(num_cpus=2, fetch_batch=16), **kw)

    rows = []

    def timed(fn):
        t = time.time()
        r = fn()
        return r, time.time() - t

    half = a.images // 2
    ref, t_ref = timed(lambda: run_scan(cfg(paths["manifest"], db, work / "clean")))
    rows.append(("clean run (reference)", t_ref, compare(ref, ref), ""))
    print(rows[-1], flush=True)

    # 1. a detector actor SIGKILLed at ~50%
    import psutil
    killed = []

    def kill_actor():
        for p in psutil.process_iter(["cmdline"]):
            if "DetectActor" in " ".join(p.info["cmdline"] or []):
                p.kill()
                killed.append(p.pid)
    out = work / "actor-killed"
    # detection runs ahead of the driver's matching: kill at the first checkpoint, while it still works
    when_done(out, "drill", 1, a.every, kill_actor)
    s, t = timed(lambda: run_scan(cfg(paths["manifest"], db, out)))
    rows.append(("detector actor SIGKILLed mid-run", t, compare(s, ref),
                 f"{len(killed)} actor process killed; Ray restarted it and re-ran its batch"))
    print(rows[-1], flush=True)

    # 2. the driver (and its local Ray) SIGKILLed at ~50%, then started again with the same run id
    out = work / "driver-killed"
    log = open(work / "driver-killed.log", "wb")
    db2 = str(work / "milvus-copy.db")  # a Lite .db has one owner process: the driver gets its own copy
    shutil.copytree(db, db2)
    cmd = [sys.executable, "-m", "logoscan", "scan", "--manifest", paths["manifest"], "--milvus-uri", db2,
           "--out", str(out), "--run-id", "drill", "--engine", "ray", "--set", "run_date=2026-11-23",
           "--set", f"checkpoint_every={a.every}", "--set", "match.search_batch=16",
           "--set", "ray.num_cpus=2", "--set", "ray.fetch_batch=16"]
    t1 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log, stderr=log,
                            env={**os.environ, "RAY_ADDRESS": ""})
    parts = out / "_checkpoints" / "drill" / "parts"
    while checkpointed(parts) < half:
        if proc.poll() is not None:
            raise SystemExit("the driver ended before it was killed; see " + str(work / "driver-killed.log"))
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t_first = time.time() - t1
    saved = checkpointed(parts)
    s, t = timed(lambda: run_scan(cfg(paths["manifest"], db2, out)))
    rows.append(("driver + local Ray SIGKILLed at 50%, run again with the same run id", t_first + t,
                 compare(s, ref), f"killed after {t_first:.0f} s with {saved} images checkpointed; "
                 f"second attempt resumed {s['rows_resumed']} and scanned {s['rows_in'] - 3 - s['rows_resumed']} "
                 f"in {t:.0f} s"))
    print(rows[-1], flush=True)

    # 3. S3: the manifest and catalog in a bucket (outputs on local disk: the proxy forwards
    #    reads, not chunked uploads); then half of all image GETs answered 503 SlowDown
    import boto3
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
    s3.create_bucket(Bucket="drill")
    m = pq.read_table(paths["manifest"]).to_pylist()
    for r in m:
        p = Path(r["image_uri"])
        if p.is_file():
            s3.upload_file(str(p), "drill", f"catalog/{p.name}")
        r["image_uri"] = f"s3://drill/catalog/{p.name}"
    pq.write_table(pa.Table.from_pylist(m), work / "s3-manifest.parquet")
    s3.upload_file(str(work / "s3-manifest.parquet"), "drill", "manifests/m.parquet")
    s3_ok, t_s3 = timed(lambda: run_scan(cfg("s3://drill/manifests/", db, work / "s3-ok")))
    rows.append(("S3 catalog, no faults", t_s3, compare(s3_ok, ref), f"{sum(flaky.gets.values())} image GETs"))
    print(rows[-1], flush=True)
    flaky.gets.clear()
    flaky.every = 2
    s, t = timed(lambda: run_scan(cfg("s3://drill/manifests/", db, work / "s3-throttled")))
    flaky.every = 0
    rows.append(("S3 answering 503 SlowDown to half of all image GETs", t, compare(s, ref),
                 f"{flaky.failed} GETs throttled, {sum(flaky.gets.values())} in all; "
                 f"{s['rows_errored'] - s3_ok['rows_errored']} extra error rows; {t - t_s3:+.0f} s vs no faults"))
    print(rows[-1], flush=True)

    # 4. a Milvus server unreachable for 10 s mid-run
    exe = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
    port = _port()
    server = subprocess.Popen([exe, "server", "--data-dir", str(work / "milvus-server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.time() < deadline:
            time.sleep(0.5)
        uri = f"http://127.0.0.1:{port}"
        build(paths["references"], uri, "logos", model, ecfg)
        gate = TcpGate(uri)
        srv_ok, t_srv = timed(lambda: run_scan(cfg(paths["manifest"], gate.url, work / "server-ok")))
        rows.append(("Milvus server, no faults", t_srv, compare(srv_ok, ref), ""))
        print(rows[-1], flush=True)
        out = work / "server-outage"

        def outage():
            gate.shut()
            time.sleep(10)
            gate.reopen()
        when_done(out, "drill", half, a.every, outage)
        s, t = timed(lambda: run_scan(cfg(paths["manifest"], gate.url, out,
                                          match=MatchConfig(search_batch=16, unavailable_s=60))))
        rows.append(("Milvus server unreachable for 10 s at 50%", t, compare(s, ref),
                     f"{t - t_srv:+.0f} s vs no faults (retries with backoff on a fresh connection)"))
        print(rows[-1], flush=True)
        gate.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        flaky.close()
        moto.stop()

    lines = [f"Catalog: {a.images} synthetic images + 3 bad rows (one missing, one HTML, one duplicate), "
             f"Ray engine on this machine, checkpoint every {a.every} images, driver batches of 16 regions. "
             "Flags are compared with the clean run by (item, image, box, label).", "",
             "| drill | seconds | rows in | rows out | flags | duplicates | missing vs clean | extra vs clean | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t, c, note in rows:
        lines.append(f"| {name} | {t:.0f} | {c['rows_in']} | {c['rows_out']} | {c['flags']} | {c['duplicates']} | "
                     f"{c['missing_vs_clean']} | {c['extra_vs_clean']} | {note} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        Path(a.write).write_text("# Reliability drills\n\nMade by `python jobs/drill_reliability.py --images "
                                 f"{a.images} --write {a.write}` (`make drill-reliability`).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

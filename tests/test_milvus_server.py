"""The cluster path: a Milvus *server* URI (Milvus Lite's own server mode on 127.0.0.1) instead of
an embedded .db, through Ray. Flags must equal the embedded run's."""
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from logoscan.config import RayConfig, ScanConfig
from logoscan.pipeline import run_scan


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    exe = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
    port = _port()
    data = tmp_path_factory.mktemp("milvus-server")
    proc = subprocess.Popen([exe, "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("milvus-lite server did not start within 60 s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _pairs(summary):
    return {(r["item_id"], r["label"]) for p in summary["outputs"]["queues"].values()
            for r in pq.read_table(p).to_pylist()}


def test_server_uri_sweep_matches_embedded_run(sample, milvus_server, tmp_path):
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    model, cfg = load_artifact(default_artifact_path("embedder"))
    meta = build(sample["references"], milvus_server, "logos", model, cfg)
    assert meta["gallery_version"] == sample["meta"]["gallery_version"]  # same refs + model → same version

    def scan(uri, out, engine):
        return run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=uri, collection="logos", out=str(out),
                                   run_id="srv", engine=engine,
                                   ray=RayConfig(num_cpus=2, fetch_batch=4)))

    served = scan(milvus_server, tmp_path / "served", "ray")
    embedded = scan(sample["milvus"], tmp_path / "embedded", "local")
    assert _pairs(served) == _pairs(embedded) and _pairs(served)
    assert served["rows_in"] == served["rows_scanned"] + served["rows_errored"]

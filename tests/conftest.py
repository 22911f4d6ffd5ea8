"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), one local Ray for the
session, and a tiny sample catalog + gallery in Milvus Lite, made with the shipped models.

Order matters: the S3 endpoint is put in the environment before Ray starts (so Ray's workers
inherit it), and Ray starts before any Milvus client exists in this process (gRPC threads in a
process break the Ray head's fork)."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `cluster` start and `ray stop` a Ray head of their own, which ends every Ray
    process on the machine, the session's local Ray included. They run last, so nothing has
    to start a Ray again in a process that already holds Milvus (gRPC) threads."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def s3_endpoint():
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def ray_local(s3_endpoint):
    import ray

    from logoscan.config import RayConfig
    from logoscan.sweep import init_ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """10 catalog images + 3 bad rows, the demo gallery built in Milvus Lite."""
    from logoscan.demo import make_sample_data
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    work = tmp_path_factory.mktemp("sample")
    paths = make_sample_data(work, n_images=10, seed=3)
    model, cfg = load_artifact(default_artifact_path("embedder"))
    paths["milvus"] = str(work / "milvus.db")
    paths["meta"] = build(paths["references"], paths["milvus"], "logos", model, cfg)
    paths["work"] = str(work)
    return paths


@pytest.fixture
def s3(s3_endpoint):
    import boto3
    return boto3.client("s3", endpoint_url=s3_endpoint)


def renamed_artifact(kind: str, version: str, folder: Path) -> str:
    """The shipped model under another version name (same weights): a retrained model, to the
    gallery and the embedding store."""
    import json

    from logoscan.models import default_artifact_path
    folder.mkdir()
    src = Path(default_artifact_path(kind))
    cfg = json.loads((src / "config.json").read_text())
    cfg["version"] = version
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    return str(folder)


def chromium() -> str:
    """Debian's Chromium for the tests that open pages (`make test` installs it); skipped where it
    is missing, except under CI, where that fails."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (`make test` installs Debian's chromium package)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    return exe


def upload_dir(s3, bucket: str, local: Path, prefix: str) -> None:
    for p in Path(local).rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local)}")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    exe = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
    port = _free_port()
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

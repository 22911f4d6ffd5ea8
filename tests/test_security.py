"""Secrets stay in the environment: never read from config files, never written to logs, run
summaries or outputs. Model weights load through safetensors only (no pickles)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from logoscan.config import FetchConfig, RayConfig, ScanConfig
from logoscan.config_io import ConfigError, load
from logoscan.sweep import run_scan
from tests.conftest import upload_dir

SECRET = "Sup3r-S3cret-Value-42"


def test_credentials_never_reach_logs_summaries_or_outputs(sample, milvus_server, s3, tmp_path, monkeypatch,
                                                            capfd):
    from logoscan import storage
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + SECRET)
    monkeypatch.setenv("MILVUS_TOKEN", "root:" + SECRET)
    storage._s3.cache_clear()  # a new S3 client, made from these credentials
    s3.create_bucket(Bucket="secrets")
    upload_dir(s3, "secrets", Path(sample["work"]) / "catalog", "catalog")
    rows = pq.read_table(sample["manifest"]).to_pylist()
    for r in rows:
        r["image_uri"] = "s3://secrets/catalog/" + Path(r["image_uri"]).name
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    s3.upload_file(str(tmp_path / "m.parquet"), "secrets", "manifests/m.parquet")
    model, cfg = load_artifact(default_artifact_path("embedder"))
    build(sample["references"], milvus_server, "logos_sec", model, cfg)
    # a server URI with a password in it, as some deployments write it
    uri = milvus_server.replace("http://", f"http://root:{SECRET}@")
    s = run_scan(ScanConfig(manifest="s3://secrets/manifests/", milvus_uri=uri, collection="logos_sec",
                            out="s3://secrets/out", run_id="sec", engine="local",
                            fetch=FetchConfig(allowed_roots=("s3://secrets/catalog",)), ray=RayConfig(fetch_batch=4)))
    storage._s3.cache_clear()
    assert s["rows_scanned"] > 0 and s["flagged"] > 0
    logs = capfd.readouterr()
    assert SECRET not in logs.out + logs.err
    published = []
    for obj in s3.list_objects_v2(Bucket="secrets", Prefix="out/")["Contents"]:
        body = s3.get_object(Bucket="secrets", Key=obj["Key"])["Body"].read()
        published.append(obj["Key"])
        assert SECRET.encode() not in body, obj["Key"]
    assert "out/runs/sec/config.json" in published and "out/runs/sec/summary.json" in published
    conf = json.loads(s3.get_object(Bucket="secrets", Key="out/runs/sec/config.json")["Body"].read())
    assert conf["milvus_uri"] == milvus_server  # the password removed, the address kept
    assert SECRET not in json.dumps(s, default=str)


@pytest.mark.parametrize("text", ["aws_secret_access_key: abc\n", "fetch:\n  password: abc\n",
                                  "milvus_token: abc\n"])
def test_config_file_with_credentials_is_refused(tmp_path, text):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match="look like credentials.*environment"):
        load(ScanConfig, str(tmp_path / "c.yaml"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_pickled_weights_are_refused_without_being_unpickled(tmp_path):
    from logoscan.models import default_artifact_path, load_artifact
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text((Path(default_artifact_path("embedder")) / "config.json").read_text())
    _Payload.target = str(tmp_path / "pwned")
    (art / "model.safetensors").write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(Exception):
        load_artifact(str(art))
    assert not (tmp_path / "pwned").exists()

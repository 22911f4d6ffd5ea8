"""The cluster path: a Milvus *server* URI (Milvus Lite's own server mode on 127.0.0.1) instead of
an embedded .db, through Ray. Flags must equal the embedded run's."""

import pyarrow.parquet as pq

from logoscan.config import RayConfig, ScanConfig
from logoscan.sweep import run_scan


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

"""The `logoscan` command as users and CI call it."""
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def _run(*args):
    return subprocess.run([sys.executable, "-m", "logoscan", *args], capture_output=True, text=True, timeout=300)


def test_bad_manifest_fails_before_any_work_naming_file_and_column(tmp_path):
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "uri": ["x.jpg"]}), m)
    r = _run("scan", "--manifest", str(m), "--milvus-uri", str(tmp_path / "x.db"), "--collection", "c",
             "--out", str(tmp_path / "out"), "--engine", "local")
    assert r.returncode == 2
    assert "m.parquet" in r.stderr and "image_uri" in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detector:\n  scor_thresh: 0.5\n")
    r = _run("scan", "--config", str(cfg), "--manifest", "m", "--milvus-uri", "x.db", "--out", "o")
    assert r.returncode == 2 and "scor_thresh" in r.stderr


def test_missing_gallery_collection_is_a_clear_error(sample, tmp_path):
    r = _run("scan", "--manifest", sample["manifest"], "--milvus-uri", str(tmp_path / "empty.db"),
             "--collection", "nope", "--out", str(tmp_path / "out"), "--engine", "local")
    assert r.returncode == 2 and "nope" in r.stderr and "gallery build" in r.stderr

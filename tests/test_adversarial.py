"""What an adversarial new user tried (issue #20): each defect found, as an outcome that failed
before its fix. Data loss and the security bypass first."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logoscan import config_io
from logoscan.cli import main
from logoscan.config import FetchConfig, PolicyConfig, ScanConfig
from logoscan.config_io import ConfigError


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ 1. store compact lost data

PRINTED_KEY = "detector-v2+embedder-v2.d29ecef7"   # as summary.json store.key spells it
OLD_KEY = "detector-v1+embedder-v1.0badc0de"


def _store(root: Path) -> str:
    """A store with two key folders (as scans write them), 3 images each in two parts."""
    from logoscan.schema import STORE_REGIONS
    from logoscan.store import Store, _parquet
    from logoscan import storage
    uri = str(root / "store")
    for key in (PRINTED_KEY, OLD_KEY):
        st = Store(uri, key, {"model_version": key.split(".")[0]})
        st.ensure()
        for n, items in enumerate((["a", "b"], ["b", "c"])):
            rows = [{"item_id": i, "image_id": i, "image_uri": f"/x/{i}.jpg", "content_key": "st:1:1", "region": 0,
                     "box": [0, 0, 1, 1], "det_score": 0.9, "embedding": [0.1] * 4, "ocr_text": None,
                     "thumbnail_jpeg": b"", "run_id": f"r{n}", "stored_at": datetime.now(timezone.utc)}
                    for i in items]
            storage.write_bytes(storage.join(st.dir, "regions", f"part-2026010{n}T000000000000Z-r{n}-00000.parquet"),
                                _parquet(pa.Table.from_pylist(rows, schema=STORE_REGIONS)))
    return uri


def _images(uri: str) -> dict[str, set]:
    from logoscan.store import Store
    out = {}
    for st in Store.folders(uri):
        out[st.key] = {r for f in st.region_files() for r in pq.read_table(f).column("item_id").to_pylist()}
    return out


@pytest.mark.parametrize("spelling", ["key=detector-v2_embedder-v2.d29ecef7", "detector-v2_embedder-v2.d29ecef7",
                                      "detector-v2+embedder-v2.d29ecef", "nonsense"])
def test_compact_keep_only_refuses_a_key_it_does_not_hold_and_deletes_nothing(tmp_path, capsys, spelling):
    uri = _store(tmp_path)
    before = _images(uri)
    rc, _, err = _cli(capsys, "store", "compact", "--store", uri, "--keep-only", spelling, "--yes")
    assert rc == 2 and "Nothing was deleted" in err and PRINTED_KEY in err
    assert _images(uri) == before


def test_compact_keep_only_takes_the_printed_key_dry_runs_by_default_and_compacts_twice_safely(tmp_path, capsys):
    uri = _store(tmp_path)
    before = _images(uri)
    rc, out, err = _cli(capsys, "store", "compact", "--store", uri, "--keep-only", PRINTED_KEY)
    plan = json.loads(out)
    assert rc == 0 and plan["dry_run"] and "nothing was changed" in err
    assert plan["keys"][OLD_KEY]["action"] == "delete" and plan["keys"][PRINTED_KEY]["images_after"] == 3
    assert _images(uri) == before  # a dry run changes nothing
    assert _cli(capsys, "store", "compact", "--store", uri, "--keep-only", PRINTED_KEY, "--yes")[0] == 0
    assert _images(uri) == {PRINTED_KEY: {"a", "b", "c"}}
    # compacting a compacted store again (no new parts between) used to overwrite its one part, then delete it
    assert _cli(capsys, "store", "compact", "--store", uri, "--yes")[0] == 0
    assert _images(uri) == {PRINTED_KEY: {"a", "b", "c"}}


def test_compact_refuses_a_manifest_that_would_drop_every_image(tmp_path, capsys):
    uri = _store(tmp_path)
    m = tmp_path / "other.parquet"
    pq.write_table(pa.table({"item_id": ["zzz"], "image_uri": ["/x/zzz.jpg"]}), m)
    rc, _, err = _cli(capsys, "store", "compact", "--store", uri, "--manifest", str(m), "--yes")
    assert rc == 2 and "none of the" in err
    assert _images(uri)[PRINTED_KEY] == {"a", "b", "c"}


# ------------------------------------------------------------------ 2. allowed_roots as one string

def test_allowed_roots_given_as_one_string_is_one_root_and_etc_passwd_stays_refused(tmp_path):
    from logoscan import stages
    from logoscan.sweep.inputs import allowed_roots
    (tmp_path / "catalog").mkdir()
    cfg = config_io.load(ScanConfig, None, [f"fetch.allowed_roots={tmp_path / 'catalog'}", "manifest=m.parquet"])
    assert cfg.fetch.allowed_roots == (str(tmp_path / "catalog"),)
    y = tmp_path / "c.yaml"
    y.write_text(f"manifest: m.parquet\nfetch:\n  allowed_roots: {tmp_path / 'catalog'}\n")
    assert config_io.load(ScanConfig, str(y)).fetch.allowed_roots == (str(tmp_path / "catalog"),)
    roots = allowed_roots(cfg)
    b = {"item_id": np.array(["x"], object), "image_id": np.array(["x"], object),
         "image_uri": np.array(["/etc/passwd"], object)}
    out = stages.fetch(b, FetchConfig(allowed_roots=roots))
    assert out["error_type"][0] == "PermissionError" and out["image_bytes"][0] == b""


# ------------------------------------------------------------------ 3. one image fails only itself

def test_a_batch_that_fails_is_retried_image_by_image():
    from logoscan.stages import _per_image

    def model(xs):
        if "bad" in xs:
            raise RuntimeError("bad input")
        return [x.upper() for x in xs]

    out = _per_image(model, ["a", "bad", "c"])
    assert out[0] == "A" and out[2] == "C" and isinstance(out[1], RuntimeError)


def test_embed_failure_of_one_image_makes_only_its_rows_error_rows():
    from logoscan import stages

    class Flaky:  # the embedder model raising on one image's crop (all-white), as a CUDA OOM or a bad crop can
        def __init__(self):
            from logoscan.models import default_artifact_path, load_artifact
            self.model, self.cfg = load_artifact(default_artifact_path("embedder"))

    f = Flaky()
    crop = np.zeros((3, f.cfg["input_size"], f.cfg["input_size"], 3), np.uint8)
    crop[1] = 255
    batch = {"item_id": np.array(["a", "b", "b"], object), "image_id": np.array(["a", "b", "b"], object),
             "image_uri": np.array(["u"] * 3, object), "kind": np.array(["region"] * 3, object), "crop": crop,
             **{k: np.array([""] * 3, object) for k in stages.ERR}}
    real = f.model.forward

    def forward(x, *a, **kw):
        if bool((x.flatten(1).min(dim=1).values > 0.99).any()):  # an all-white crop (normalised to 1.0)
            raise RuntimeError("the model refused this crop")
        return real(x, *a, **kw)

    f.model.forward = forward
    from logoscan.config import EmbedderConfig
    out = stages.embed(batch, f.model, f.cfg, EmbedderConfig(batch_size=8))
    assert list(out["kind"]) == ["region", "error", "error"]
    assert list(out["error_stage"]) == ["", "embed", "embed"]
    assert np.abs(out["embedding"][0]).sum() > 0


# ------------------------------------------------------------------ 5. queue names that collide

def test_categories_sharing_a_queue_file_are_refused_at_gallery_and_scan_time(sample, tmp_path):
    from logoscan.sweep import ScanError, run_scan
    from logoscan.schema import SchemaError, validate_references
    refs = pa.table({"logo_id": ["1", "2"], "label": ["x", "y"], "category": ["a/b", "a_b"],
                     "image_uri": ["/a.png", "/b.png"]})
    with pytest.raises(SchemaError, match="a/b"):
        validate_references(refs, "refs.parquet")
    policy = PolicyConfig(categories={"brand": {"queue": "review/x"}, "prohibited": {"queue": "review_x"}})
    with pytest.raises(ScanError, match="same file"):
        run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], out=str(tmp_path / "o"),
                            engine="local", policy=policy))
    assert not (tmp_path / "o" / "flagged").exists()


# ------------------------------------------------------------------ 8. config values checked at load time

@pytest.mark.parametrize("override, key", [
    ("ocr.enabled=maybe", "ocr.enabled"), ("detector.score_thresh=nan", "detector.score_thresh"),
    ("detector.score_thresh=1.5", "detector.score_thresh"), ("fetch.max_pixels=-1", "fetch.max_pixels"),
    ("checkpoint_every=-3", "checkpoint_every"), ("match.top_k=0", "match.top_k"),
    ("detector.batch_size=abc", "detector.batch_size"), ("engine=spark", "engine"),
    ("policy.categories.brand.threshold=3", "policy.categories.brand.threshold"),
    ("policy.default_threshold=inf", "policy.default_threshold"), ("ray.cpus_per_actor=0", "ray.cpus_per_actor"),
    ("detector.device=gpu", "detector.device"), ("max_error_rate=2", "max_error_rate"),
])
def test_a_bad_config_value_is_one_error_naming_key_and_value(override, key):
    with pytest.raises(ConfigError) as e:
        config_io.load(ScanConfig, None, [override])
    msg = str(e.value)
    assert key in msg and override.split("=", 1)[1] in msg and "\n" not in msg


def test_quoted_false_is_false_and_category_keys_get_the_credential_check():
    assert config_io.load(ScanConfig, None, ['ocr.enabled="false"']).ocr.enabled is False
    assert config_io.load(ScanConfig, None, ["ocr.enabled=no"]).ocr.enabled is False
    with pytest.raises(ConfigError, match="credentials"):
        config_io.load(ScanConfig, None, ["policy.categories.brand.api_key=abc"])
    with pytest.raises(ConfigError, match="unknown config key.*tresh"):
        config_io.load(ScanConfig, None, ["policy.categories.brand.tresh=0.3"])


def test_configs_made_in_code_are_checked_too():
    from logoscan.config import DetectorConfig
    with pytest.raises(ValueError):
        DetectorConfig(batch_size=0)
    with pytest.raises(ValueError):
        FetchConfig(max_pixels=float("nan"))


# ------------------------------------------------------------------ 9-12. empty nights, stray files, failed nights, locks

def _manifest(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("item_id", pa.string()),
                                                                ("image_uri", pa.string())])), path)
    return str(path)


def test_a_quiet_night_publishes_an_empty_run(sample, tmp_path, capsys):
    m = _manifest(tmp_path / "empty.parquet", [])
    rc, out, _ = _cli(capsys, "scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out",
                      str(tmp_path / "o"), "--engine", "local", "--run-id", "quiet")
    s = json.loads(out)
    assert rc == 0 and (s["rows_in"], s["rows_scanned"], s["rows_errored"]) == (0, 0, 0)
    assert (tmp_path / "o" / "runs" / "quiet" / "_SUCCESS").exists()


def test_a_manifest_folder_with_another_file_type_is_refused_by_name(sample, tmp_path, capsys):
    folder = tmp_path / "manifests"
    folder.mkdir()
    _manifest(folder / "part-0.parquet", [{"item_id": "a", "image_uri": "/x.jpg"}])
    (folder / "part-1.csv").write_text("item_id,image_uri\nb,/y.jpg\n")
    rc, _, err = _cli(capsys, "scan", "--manifest", str(folder), "--milvus-uri", sample["milvus"], "--out",
                      str(tmp_path / "o"), "--engine", "local")
    assert rc == 2 and "part-1.csv" in err and "not .parquet" in err


def test_a_night_where_nothing_was_scanned_exits_non_zero_after_publishing(sample, tmp_path, capsys):
    m = _manifest(tmp_path / "m.parquet", [{"item_id": "a", "image_uri": "/etc/hostname"},
                                           {"item_id": None, "image_uri": str(tmp_path / "x.jpg")},
                                           {"item_id": "", "image_uri": str(tmp_path / "x.jpg")}])
    rc, out, err = _cli(capsys, "scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out",
                        str(tmp_path / "o"), "--engine", "local", "--run-id", "bad-night")
    assert rc == 3 and "nothing was scanned" in err
    errors = pq.read_table(json.loads(out)["outputs"]["errors"]).to_pylist()
    assert sorted(e["error_type"] for e in errors) == ["MissingItemId", "MissingItemId", "PermissionError"]
    # the errors are published for the morning: a reader sees the run
    assert (tmp_path / "o" / "runs" / "bad-night" / "_SUCCESS").exists()


def test_max_error_rate_fails_a_mostly_broken_night(sample, tmp_path, capsys):
    good = pq.read_table(sample["manifest"]).to_pylist()[:1]
    rows = [{"item_id": good[0]["item_id"], "image_uri": good[0]["image_uri"]}] + \
        [{"item_id": f"gone-{i}", "image_uri": str(Path(sample["work"]) / f"gone-{i}.jpg")} for i in range(3)]
    m = _manifest(Path(sample["work"]) / "mostly-broken.parquet", rows)
    args = ["scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", str(tmp_path / "o"),
            "--engine", "local"]
    assert _cli(capsys, *args)[0] == 0  # default: only a night with nothing scanned fails
    rc, _, err = _cli(capsys, *args, "--max-error-rate", "0.5")
    assert rc == 3 and "3 of 4 rows errored" in err


def test_a_second_run_with_the_same_run_id_on_the_same_out_is_refused(sample, tmp_path, capsys):
    from logoscan.runlock import RunLock
    m = _manifest(tmp_path / "empty.parquet", [])
    out = str(tmp_path / "o")
    args = ["scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", out, "--engine", "local",
            "--run-id", "nightly"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from logoscan.runlock import RunLock\n"
                               f"with RunLock({out!r}, 'nightly'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = _cli(capsys, *args)
        assert rc == 2 and "already running" in err and str(holder.pid) in err
        assert _cli(capsys, *args[:-1], "other")[0] == 0  # another run id is not blocked
    finally:
        holder.kill()
        holder.wait()
    assert _cli(capsys, *args)[0] == 0  # a killed holder's lock is gone with its process (resume works)
    with RunLock(out, "x"):
        pass


def test_an_s3_run_lease_is_exclusive_and_an_expired_one_is_taken_over(s3):
    from logoscan.runlock import RunLock, RunLocked
    s3.create_bucket(Bucket="locks")
    first = RunLock("s3://locks/out", "n1").__enter__()
    with pytest.raises(RunLocked, match="already running"):
        RunLock("s3://locks/out", "n1").__enter__()
    first.release()
    with RunLock("s3://locks/out", "n1"):
        pass
    # a driver that died: its lease is not renewed, and expires
    dead = RunLock("s3://locks/out", "n2", lease_s=0.5)
    dead._acquire_s3()
    dead._stop.set()  # stop renewing, without deleting it (the process "died")
    import time
    time.sleep(1.0)
    with RunLock("s3://locks/out", "n2"):
        pass


# ------------------------------------------------------------------ 7. relative paths

def test_relative_paths_are_stored_absolute(sample, tmp_path, monkeypatch, capsys):
    from logoscan import storage
    from logoscan.feedback import add_logo
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    src = pq.read_table(sample["references"]).column("image_uri")[0].as_py()
    row = add_logo("refs", src, "new-mark", "brand")
    assert os.path.isabs(row["image_uri"]) and os.path.exists(row["image_uri"])
    _manifest(work / "empty.parquet", [])
    rc, out, _ = _cli(capsys, "scan", "--manifest", "empty.parquet", "--milvus-uri", sample["milvus"],
                      "--out", "queues", "--engine", "local")
    outputs = json.loads(out)["outputs"]
    assert rc == 0 and os.path.isabs(outputs["errors"]) and os.path.isabs(outputs["summary"])
    monkeypatch.chdir(tmp_path)  # from another directory, the references still name their pictures
    stored = [r for f in storage.list_files(str(work / "refs"), ".parquet") for r in pq.read_table(f).to_pylist()]
    assert stored and all(os.path.exists(r["image_uri"]) for r in stored)
    assert json.loads(Path(outputs["summary"]).read_text())["outputs"]["errors"] == outputs["errors"]


def test_a_photo_of_the_mark_is_added_as_its_box_and_a_box_outside_is_refused(sample, tmp_path, capsys):
    from PIL import Image

    from logoscan.feedback import FeedbackError, add_logo
    src = pq.read_table(sample["references"]).column("image_uri")[0].as_py()
    photo = tmp_path / "street.png"
    canvas = Image.new("RGB", (300, 200), (40, 40, 40))
    canvas.paste(Image.open(src).convert("RGB").resize((60, 60)), (200, 100))
    canvas.save(photo)
    row = add_logo(str(tmp_path / "refs"), str(photo), "new-mark", "brand", box=(200, 100, 260, 160))
    assert Image.open(row["image_uri"]).size == (60, 60)
    other = add_logo(str(tmp_path / "refs"), str(photo), "new-mark", "brand", box=(0, 0, 60, 60))
    assert other["logo_id"] != row["logo_id"]                  # another region, another reference
    with pytest.raises(FeedbackError, match="is not inside"):
        add_logo(str(tmp_path / "refs"), str(photo), "new-mark", "brand", box=(250, 100, 310, 160))
    with pytest.raises(SystemExit) as e:
        main(["gallery", "add", "--refs", str(tmp_path / "refs"), "--image", str(photo), "--label", "x",
              "--category", "brand", "--box", "1,2,3", "--no-build"])
    assert e.value.code == 2 and "is not X1,Y1,X2,Y2" in capsys.readouterr().err


# ------------------------------------------------------------------ 14. one line, never a traceback

def test_errors_are_one_line_not_a_traceback(sample, tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("detector:\n  score_thresh: [0.3\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    m = _manifest(tmp_path / "m.parquet", [])
    truth = tmp_path / "truth.parquet"
    pq.write_table(pa.table({"item": ["a"]}), truth)
    assert _cli(capsys, "scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", str(tmp_path / "run"),
                "--engine", "local")[0] == 0
    cases = [
        ["evaluate", "--summary", str(tmp_path / "run"), "--truth", str(truth)],
        ["evaluate", "--summary", str(tmp_path / "run"), "--truth", str(bad_yaml)],
        ["gallery", "build", "--refs", str(tmp_path / "refs"), "--milvus-uri", str(tmp_path / "g.db"),
         "--collection", "c"],
        ["scan", "--config", str(bad_yaml), "--manifest", m, "--milvus-uri", sample["milvus"], "--out", "o"],
        ["scan", "--manifest", m, "--milvus-uri", "http://127.0.0.1:1", "--out", str(tmp_path / "o1"),
         "--engine", "local"],
        ["scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", str(afile), "--engine", "local"],
        ["evaluate", "--summary", str(tmp_path), "--truth", str(truth)],
        ["evaluate", "--summary", str(afile), "--truth", str(truth)],
    ]
    db = str(tmp_path / "held.db")  # a second process on a Milvus Lite .db
    holder = subprocess.Popen([sys.executable, "-c", "import time; from pymilvus import MilvusClient\n"
                               f"c = MilvusClient({db!r}); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cases.append(["gallery", "versions", "--milvus-uri", db, "--collection", "logos"])
        for args in cases:
            rc, _, err = _cli(capsys, *args)
            assert rc == 2, (args, err)
            last = err.strip().splitlines()[-1]
            assert last.startswith("logoscan: error: ") and "Traceback" not in err, (args, err)
    finally:
        holder.kill()
        holder.wait()
    assert "one process at a time" in err


def test_every_subcommand_has_a_description_and_every_option_a_help_text():
    import argparse

    from logoscan.cli import _describe_subcommands, parser
    p = parser()
    _describe_subcommands(p)
    missing = []

    def walk(sp, path):
        for a in sp._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    if not child.description:
                        missing.append(f"{path} {name}: description")
                    walk(child, f"{path} {name}")
            elif a.help is None and a.option_strings and path != "logoscan":
                missing.append(f"{path} {a.option_strings[0]}")
    walk(p, "logoscan")
    assert not missing, missing


# ------------------------------------------------------------------ found here: a run id that is a path

@pytest.mark.parametrize("run_id", ["..", ".", "_staging", "a/../..", "x y"])
def test_a_run_id_that_would_name_another_folder_is_refused_and_out_is_untouched(sample, tmp_path, capsys, run_id):
    """`--run-id ..` used to make publishing clear OUT/_staging/.. — OUT itself, every earlier run."""
    out = tmp_path / "o"
    m = _manifest(tmp_path / "empty.parquet", [])
    assert _cli(capsys, "scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", str(out),
                "--engine", "local", "--run-id", "earlier")[0] == 0
    before = _tree_of(out)
    rc, _, err = _cli(capsys, "scan", "--manifest", m, "--milvus-uri", sample["milvus"], "--out", str(out),
                      "--engine", "local", "--run-id", run_id)
    assert rc == 2 and "run_id" in err
    assert _tree_of(out) == before


def _tree_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_carrying_a_column_the_flagged_rows_already_have_is_refused(sample, tmp_path, capsys):
    rc, _, err = _cli(capsys, "scan", "--manifest", sample["manifest"], "--milvus-uri", sample["milvus"],
                      "--out", str(tmp_path / "o"), "--engine", "local", "--set", "carry_columns=item_id")
    assert rc == 2 and "item_id" in err and not (tmp_path / "o").exists()


def test_outputs_inside_the_manifest_folder_are_refused(sample, tmp_path, capsys):
    """The next night would read this night's queues and store as manifests (found here)."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    _manifest(folder / "part-0.parquet", [])
    rc, _, err = _cli(capsys, "scan", "--manifest", str(folder), "--milvus-uri", sample["milvus"], "--out",
                      str(folder / "queues"), "--engine", "local")
    assert rc == 2 and "inside the manifest folder" in err and not (folder / "queues").exists()

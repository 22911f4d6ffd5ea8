"""The sweep end to end on a tiny sample catalog, with the shipped models, real Milvus Lite,
real Ray and a real S3 endpoint. Assertions are on what reviewers and operators see."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logoscan.config import FetchConfig, RayConfig, ScanConfig
from logoscan.gallery import GalleryError
from logoscan.sweep import run_scan
from logoscan.schema import RUN_SUMMARY_KEYS
from tests.conftest import renamed_artifact, upload_dir


def _cfg(sample, out, **kw) -> ScanConfig:
    return ScanConfig(manifest=sample["manifest"], milvus_uri=sample["milvus"], collection="logos",
                      out=str(out), run_id=kw.pop("run_id", "t"), run_date="2026-11-23",
                      ray=RayConfig(num_cpus=2, fetch_batch=4), **kw)


def _pairs(summary) -> set[tuple[str, str]]:
    pairs = set()
    for path in summary["outputs"]["queues"].values():
        for r in pq.read_table(path).to_pylist():
            pairs.add((r["item_id"], r["label"]))
    return pairs


def _truth(sample) -> set[tuple[str, str]]:
    return {(r["item_id"], r["label"]) for r in pq.read_table(sample["truth"]).to_pylist() if r["label"]}


@pytest.fixture(scope="module")
def local_run(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return run_scan(_cfg(sample, out, engine="local")), out


def test_local_sweep_flags_planted_logos_in_their_queues(sample, local_run):
    summary, out = local_run
    truth, flagged = _truth(sample), _pairs(summary)
    assert truth, "the sample catalog plants gallery logos"
    recall = len(truth & flagged) / len(truth)
    precision = len(truth & flagged) / max(len(flagged), 1)
    assert recall >= 0.8 and precision >= 0.8, (truth, flagged)
    cats = {label: cat for *_, label, cat in
            [(r["item_id"], r["label"], r["category"]) for r in pq.read_table(sample["truth"]).to_pylist()]}
    for queue, path in summary["outputs"]["queues"].items():
        rows = pq.read_table(path).to_pylist()
        assert rows and all(r["category"] == queue for r in rows)  # default policy: queue = category
        for r in rows:
            assert r["distance"] <= r["threshold"]
            assert r["thumbnail_jpeg"][:2] == b"\xff\xd8"  # a JPEG a reviewer can open
            assert cats.get(r["label"], r["category"]) == r["category"]
            assert r["run_id"] == "t" and r["gallery_version"] == sample["meta"]["gallery_version"]


def test_a_tiled_sweep_finds_what_the_plain_one_finds_and_accounts_for_every_row(sample, local_run, tmp_path):
    """detector.tiles 2 (the whole image plus 2 x 2 windows): the planted logos are still flagged,
    every row is scanned or an error, and the run is stored under another store key."""
    from logoscan.config import DetectorConfig
    plain, _ = local_run
    tiled = run_scan(_cfg(sample, tmp_path, engine="local", detector=DetectorConfig(tiles=2)))
    truth = _truth(sample)
    assert len(truth & _pairs(tiled)) >= len(truth & _pairs(plain))
    assert tiled["rows_in"] == tiled["rows_scanned"] + tiled["rows_errored"] == plain["rows_in"]
    assert tiled["store"]["key"] != plain["store"]["key"]


def test_every_row_is_scanned_or_in_errors(sample, local_run):
    summary, out = local_run
    manifest_rows = pq.read_table(sample["manifest"]).num_rows
    assert summary["rows_in"] == manifest_rows == summary["rows_scanned"] + summary["rows_errored"]
    errors = pq.read_table(summary["outputs"]["errors"]).to_pylist()
    by_item = {e["item_id"]: e for e in errors}
    assert by_item["bad-missing"]["stage"] == "fetch" and by_item["bad-missing"]["error_type"] == "NotFound"
    assert by_item["bad-html"]["stage"] == "decode" and "cannot decode" in by_item["bad-html"]["message"]
    dup = [e for e in errors if e["error_type"] == "DuplicateRow"]
    assert len(dup) == 1 and dup[0]["stage"] == "manifest"
    assert len(errors) == summary["rows_errored"] == 3


def test_reviewer_reads_one_queue_for_one_night(local_run):
    summary, out = local_run
    queue = next(iter(summary["outputs"]["queues"]))
    t = pq.read_table(Path(out) / "flagged" / f"queue={queue}" / "run_date=2026-11-23")
    assert t.num_rows == summary["flagged_by_queue"][queue]
    assert {"item_id", "label", "distance", "threshold", "box", "thumbnail_jpeg"} <= set(t.column_names)
    assert (Path(out) / "runs" / "t" / "_SUCCESS").exists()
    s = json.loads((Path(out) / "runs" / "t" / "summary.json").read_text())
    assert set(RUN_SUMMARY_KEYS) <= set(s)
    assert s["versions"]["gallery"] == summary["versions"]["gallery"]


def test_ray_engine_gives_the_same_flags_as_in_process(sample, local_run, tmp_path):
    summary = run_scan(replace(_cfg(sample, tmp_path, engine="ray"), ray=RayConfig(num_cpus=2, fetch_batch=1)))
    assert _pairs(summary) == _pairs(local_run[0])
    assert summary["rows_errored"] == local_run[0]["rows_errored"]
    # the pool it ran, as the run's config.json records it: ``detector_actors: auto`` on the
    # session's 2 CPUs, with 13 blocks (4 a detector actor at least), is two actors of 2 threads
    ran = json.loads((tmp_path / "runs" / "t" / "config.json").read_text())
    assert (ran["ray"]["detector_actors"], ran["detector"]["threads"]) == (2, 2)


def test_a_separate_embedder_actor_gives_the_same_flags(sample, local_run, tmp_path):
    """``ray.embedder_actors: 1`` (a GPU node's layout: detector and embedder in their own actors,
    each setting the allocator before it loads) flags what the in-process engine flags."""
    summary = run_scan(replace(_cfg(sample, tmp_path, engine="ray"),
                               ray=RayConfig(num_cpus=2, fetch_batch=4, embedder_actors=1)))
    assert _pairs(summary) == _pairs(local_run[0]) and _pairs(summary)
    assert summary["rows_errored"] == local_run[0]["rows_errored"]
    assert summary["config"]["ray"]["embedder_actors"] == 1


@pytest.mark.parametrize("matchers", [1, 0])  # the streaming sweep, and the driver matching (engines.run_ray)
def test_model_actor_processes_start_with_a_passive_openmp_wait(sample, local_run, tmp_path, monkeypatch, matchers):
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it, so the model pools pass it in their
    runtime_env (``logoscan.actors.MODEL_ENV``): Ray starts each model actor's process with it, the
    flags stay the in-process engine's, and a value in the driver's own environment wins. Each model
    pool also reserves ``ray.actor_memory_mib`` of Ray's logical memory (none elsewhere)."""
    import os

    import ray

    from logoscan.actors import model_actor_options
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    pools, memory = {}, {}
    map_batches = ray.data.Dataset.map_batches

    def recording(self, fn, *args, **kwargs):
        pools[getattr(fn, "__name__", str(fn))] = kwargs.get("runtime_env")
        memory[getattr(fn, "__name__", str(fn))] = kwargs.get("memory")
        return map_batches(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording)
    summary = run_scan(replace(_cfg(sample, tmp_path, engine="ray"),
                               ray=RayConfig(num_cpus=2, fetch_batch=4, embedder_actors=1, matcher_actors=matchers)))
    assert _pairs(summary) == _pairs(local_run[0]) and _pairs(summary)
    passive = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert pools["DetectActor"] == pools["EmbedActor"] == passive, pools
    assert pools.get("MatchActor") is None and pools["fetch"] is None  # no torch there
    assert memory["DetectActor"] == memory["EmbedActor"] == RayConfig().actor_memory_mib * 2 ** 20 > 0, memory
    assert memory.get("MatchActor") is None and memory["fetch"] is None

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self):
            return os.environ.get("OMP_WAIT_POLICY")

    probe = Probe.options(**model_actor_options()).remote()
    assert ray.get(probe.env.remote()) == "PASSIVE"
    ray.kill(probe)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert model_actor_options() == {}


def test_a_model_actor_memory_no_node_offers_stops_the_sweep_with_a_clear_error(sample, tmp_path):
    """Ray Data waits forever for an actor no node can hold; the sweep says so before it starts."""
    from logoscan.sweep.errors import ScanError
    cfg = _cfg(sample, tmp_path, engine="ray")
    with pytest.raises(ScanError, match=r"ray.actor_memory_mib=1000000000: no node .* offers"):
        run_scan(replace(cfg, ray=replace(cfg.ray, actor_memory_mib=10 ** 9)))


def test_the_local_ray_runs_its_workers_at_the_configured_niceness():
    """The local Ray the job starts (``ray.worker_niceness``, default 0) runs the model actors'
    workers at the driver's priority, not Ray's default 15 (they yielded CPU to every other
    process on a small machine); the key is checked when the config is read."""
    import os

    import ray

    from logoscan.config import ScanConfig
    from logoscan.config_io import ConfigError, load

    @ray.remote(num_cpus=0)
    def niceness():
        return os.nice(0)

    assert ray.get(niceness.remote()) == load(ScanConfig, None, []).ray.worker_niceness == 0
    assert load(ScanConfig, None, ["ray.worker_niceness=null"]).ray.worker_niceness is None
    with pytest.raises(ConfigError, match="worker_niceness"):
        load(ScanConfig, None, ["ray.worker_niceness=25"])


def test_read_shuffle_and_matcher_workers_do_not_load_torch():
    """Ray's read, shuffle, fetch and matcher workers unpickle their functions and arguments from
    these modules; none of them runs a model, so none may import torch (it cost each worker about
    3.5 CPU-seconds and 600 MiB of RSS when ``logoscan.sweep`` imported its whole package)."""
    import subprocess
    import sys

    code = ("import sys, logoscan.sweep.stream, logoscan.sweep.blockstats, logoscan.actors, logoscan.store, "
            "logoscan.thresholds, logoscan.config; from logoscan.sweep import ScanError; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_engine_across_several_shuffle_partitions_gives_the_same_rows(sample, local_run, tmp_path, monkeypatch):
    """Small manifests fit one partition and skip the hash shuffle (``stream.by_key``); a manifest
    over ``SHUFFLE_ROWS`` takes it: the same flags and the same duplicate rows either way."""
    from logoscan.sweep import stream
    monkeypatch.setattr(stream, "SHUFFLE_ROWS", 3)  # 13 rows: 5 partitions
    summary = run_scan(_cfg(sample, tmp_path, engine="ray"))
    assert _pairs(summary) == _pairs(local_run[0])
    errors = pq.read_table(summary["outputs"]["errors"]).to_pylist()
    assert sorted((e["item_id"], e["error_type"]) for e in errors) == sorted(
        (e["item_id"], e["error_type"]) for e in pq.read_table(local_run[0]["outputs"]["errors"]).to_pylist())
    assert [e["error_type"] for e in errors].count("DuplicateRow") == 1


def test_rerun_with_same_run_id_replaces_not_duplicates(sample, tmp_path):
    first = run_scan(_cfg(sample, tmp_path, engine="local", run_id="again"))
    second = run_scan(_cfg(sample, tmp_path, engine="local", run_id="again"))
    for queue in first["outputs"]["queues"]:
        t = pq.read_table(tmp_path / "flagged" / f"queue={queue}" / "run_date=2026-11-23")
        assert t.num_rows == second["flagged_by_queue"][queue]
    assert not list((tmp_path / "_staging").glob("*/*"))


def test_policy_names_queues_and_pins_thresholds(sample, tmp_path):
    from logoscan.config import PolicyConfig
    policy = PolicyConfig(categories={"prohibited": {"queue": "urgent"}, "brand": {"threshold": 0.0}})
    s = run_scan(_cfg(sample, tmp_path, engine="local", policy=policy))
    assert "prohibited" not in s["outputs"]["queues"]
    assert "brand" not in s["flagged_by_queue"]  # a threshold of 0 accepts nothing
    if any(cat == "prohibited" for *_, cat in
           [(r["item_id"], r["category"]) for r in pq.read_table(sample["truth"]).to_pylist()]):
        assert "urgent" in s["outputs"]["queues"]


def test_gallery_from_another_embedder_is_refused(sample, tmp_path):
    from logoscan.config import EmbedderConfig
    fake = renamed_artifact("embedder", "embedder-other", tmp_path / "emb")
    with pytest.raises(GalleryError, match="rebuild the gallery"):
        run_scan(_cfg(sample, tmp_path / "o", engine="local", embedder=EmbedderConfig(artifact=fake)))


def test_sweep_reads_and_writes_s3_through_ray(sample, tmp_path, s3):
    """Manifest, images and outputs on a real S3 endpoint (moto's server on loopback)."""
    import pyarrow as pa

    from logoscan import storage
    s3.create_bucket(Bucket="catalog")
    s3.create_bucket(Bucket="queues")
    work = Path(sample["work"])
    upload_dir(s3, "catalog", work / "catalog", "images")
    rows = pq.read_table(sample["manifest"]).to_pylist()
    for r in rows:
        r["image_uri"] = "s3://catalog/images/" + Path(r["image_uri"]).name
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    s3.put_object(Bucket="catalog", Key="manifests/nightly/part-0.parquet", Body=buf.getvalue().to_pybytes())
    cfg = replace(_cfg(sample, "s3://queues/logoscan", engine="ray"), manifest="s3://catalog/manifests/nightly/")
    summary = run_scan(cfg)
    assert summary["rows_in"] == len(rows) == summary["rows_scanned"] + summary["rows_errored"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="queues")["Contents"]}
    assert "logoscan/runs/t/_SUCCESS" in keys
    # no staged file is left (pyarrow keeps an empty "dir/" marker object where it deleted the last
    # file; readers skip _-prefixed paths and markers hold no data)
    assert not [k for k in keys if k.startswith("logoscan/_staging/") and not k.endswith("/")]
    fs, path = storage.resolve(next(iter(summary["outputs"]["queues"].values())))
    assert pq.read_table(path, filesystem=fs).num_rows > 0
    errors = pq.read_table(storage.resolve(summary["outputs"]["errors"])[1],
                           filesystem=fs).to_pylist()
    missing = [e for e in errors if e["item_id"] == "bad-missing"]
    assert missing and missing[0]["error_type"] == "NotFound"


def test_carry_columns_reach_the_flagged_rows(sample, tmp_path):
    import pyarrow as pa
    t = pq.read_table(sample["manifest"])
    t = t.append_column("sku", pa.array([f"sku-{i}" for i in range(t.num_rows)]))
    pq.write_table(t, tmp_path / "m.parquet")
    sku = {}
    for image_id, value in zip(t.column("image_id").to_pylist(), t.column("sku").to_pylist()):
        sku.setdefault(image_id, value)  # a duplicate row is not scanned: the first row's columns win
    s = run_scan(replace(_cfg(sample, tmp_path / "out", engine="local"), manifest=str(tmp_path / "m.parquet"),
                         carry_columns=("sku",), fetch=FetchConfig(allowed_roots=(sample["work"],))))
    rows = [r for p in s["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()]
    assert rows and all(r["sku"] == sku[r["image_id"]] for r in rows)
    with pytest.raises(Exception, match="carry_columns.*nope"):
        run_scan(replace(_cfg(sample, tmp_path / "o2", engine="local"), carry_columns=("nope",)))


def test_actor_cpu_reservation_leaves_room_for_ray_data():
    """Three 0.5-CPU actors on 2 CPUs stalled the sweep silently; the reservation is lowered."""
    from logoscan.sweep.engines import FREE_FOR_RAY_DATA, actor_cpus
    r = RayConfig(cpus_per_actor=0.5)
    assert actor_cpus(r, 1, 2.0) == 0.5          # one detector actor on 2 CPUs: as configured
    for n in (2, 3):                             # + an embedder pool, + OCR: lowered to fit
        low = actor_cpus(r, n, 2.0)
        assert 0 < low < 0.5 and n * low + 0.25 + FREE_FOR_RAY_DATA <= 2.0 + 1e-9
    assert actor_cpus(r, 3, 16.0) == 0.5         # a cluster with room: untouched


def test_matcher_actors_count_in_the_cpu_reservation():
    """The matcher actor pool that hung the sweep on 2 CPUs: actors reserving more than leaves
    FREE_FOR_RAY_DATA free stall Ray Data with every actor idle (jobs/diag_matcher_pool.py
    reproduces it). The matchers' own reservation counts, and the model actors give way."""
    from logoscan.sweep.engines import FREE_FOR_RAY_DATA, actor_cpus
    r = RayConfig(cpus_per_actor=0.5, matcher_actors=2, matcher_cpus=0.25)
    cpa = actor_cpus(r, 2, 2.0, matchers=r.matcher_actors)
    assert 0 < cpa < 0.5
    assert 2 * cpa + 0.25 + r.matcher_actors * r.matcher_cpus + FREE_FOR_RAY_DATA <= 2.0 + 1e-9


def test_auto_detector_pool_is_one_two_thread_actor_per_cpu_beside_the_other_pools():
    """``ray.detector_actors: auto`` with ``detector.threads`` unset: on 2 CPUs the measured faster
    shape, 2 actors of 2 threads (docs/bench/throughput.md); the OCR/embedder actors' CPUs and a
    GPU's shares are left to them; a configured count or thread number is kept."""
    from logoscan.sweep.engines import detector_pool
    auto = RayConfig()
    assert auto.detector_actors == "auto"
    assert detector_pool(auto, None, 0, 2.0, 0.0, 2.0) == (2, 2)
    assert detector_pool(auto, None, 2, 2.0, 0.0, 2.0) == (1, 2)      # OCR + its embedder pool on 2 CPUs
    assert detector_pool(auto, None, 0, 2.0, 0.0, 2.0, blocks=8) == (2, 2)
    assert detector_pool(auto, None, 0, 1.0, 0.0, 1.0) == (1, 1)      # no more threads than a node's CPUs
    assert detector_pool(auto, None, 0, 2.0, 0.0, 2.0, blocks=7) == (1, 2)     # a short run: one copy of the models
    assert detector_pool(auto, None, 0, 16.0, 0.0, 16.0, blocks=12) == (3, 5)  # one actor per 4 blocks at most
    assert detector_pool(RayConfig(detector_actors=4), 1, 0, 16.0, 0.0, 16.0, blocks=1) == (4, 1)  # as configured
    assert detector_pool(auto, 2, 0, 16.0, 0.0, 8.0) == (8, 2)        # threads set: CPUs / threads
    assert detector_pool(RayConfig(detector_actors=1), None, 0, 2.0, 0.0, 2.0) == (1, 2)  # the old default
    assert detector_pool(RayConfig(detector_actors=2), None, 0, 32.0, 0.0, 8.0) == (2, 8)  # at most a node's CPUs
    gpu = RayConfig(num_gpus_per_actor=0.5)
    assert detector_pool(gpu, None, 1, 16.0, 2.0, 16.0) == (3, 4)     # 4 halves of 2 GPUs, 1 for the embedder
    assert detector_pool(gpu, None, 0, 0.0, 0.0, 0.0) == (1, 1)       # nothing known: one actor, one thread


def test_matcher_pool_on_two_cpus_hands_back_every_row(sample, tmp_path):
    """Ray engine on the session's 2-CPU local Ray with a pool of two matcher actors searching the
    gallery's .db served on loopback: every row comes back and the flags are the in-process ones."""
    pool = run_scan(replace(_cfg(sample, tmp_path / "pool", engine="ray"),
                            ray=RayConfig(num_cpus=2, fetch_batch=4, matcher_actors=2)))
    local = run_scan(_cfg(sample, tmp_path / "local", engine="local"))

    def flags(s):
        return {(r["item_id"], r["label"], tuple(round(v) for v in r["box"]))
                for p in s["outputs"]["queues"].values() for r in pq.read_table(p).to_pylist()}
    assert pool["rows_in"] == pool["rows_scanned"] + pool["rows_errored"] == local["rows_in"]
    assert flags(pool) == flags(local) and flags(pool)
    assert pool["config"]["milvus_uri"] == sample["milvus"]  # the .db as given, not the served URI


def test_ray_data_keeps_only_the_latest_block_stats_in_the_driver(monkeypatch):
    """Ray Data keeps one BlockStats per output block for a whole execution (ray-project/ray#66016):
    the sweep's callback trims each operator's list, so the driver does not grow with the night."""
    import ray.data

    from logoscan.sweep import blockstats, stream
    stream.bounded_block_stats()
    stream.bounded_block_stats()
    assert ray.data.DataContext.get_current().custom_execution_callback_classes.count(blockstats.TrimBlockStats) == 1
    monkeypatch.setattr(blockstats, "KEEP", 10)
    ds = ray.data.range(3000, override_num_blocks=300).map_batches(lambda b: {"n": [len(b["id"])]}, batch_size=None)
    assert sum(int(b["n"].sum()) for b in ds.iter_batches(batch_size=None)) == 3000
    produced = int(re.search(r"(\d+) blocks produced", ds.stats()).group(1))
    assert 10 <= produced <= 20  # of 300


def test_publisher_writes_few_row_groups_from_many_small_parts(tmp_path):
    """Each ParquetWriter.write_table call ends a row group, whose metadata the writer holds until
    it closes: the publisher gathers the parts' rows into row groups of up to ``rows`` rows."""
    from logoscan.sweep.stream import RowGroups
    schema = pa.schema([("i", pa.int64()), ("s", pa.string())])
    w = RowGroups(str(tmp_path / "q" / "f.parquet"), schema, rows=256)
    for k in range(100):
        w.write_table(pa.table({"i": list(range(k * 10, k * 10 + 10)), "s": [str(k)] * 10}, schema=schema))
    w.close()
    f = pq.ParquetFile(tmp_path / "q" / "f.parquet")
    assert f.num_row_groups == 4 and f.read().column("i").to_pylist() == list(range(1000))


def test_streaming_scan_holds_nothing_of_the_manifest_in_the_driver(sample, local_run, tmp_path, monkeypatch):
    """Issue #21: the Ray sweep streams. The driver never reads the manifest's rows, never builds
    the collector of finished images, never loads the store's index, and what it reads back from
    the dataset is each block's row count only; the flags and errors are the in-process ones."""
    import ray.data

    from logoscan.store import Store
    from logoscan.sweep import run as sweep_run

    def refuse(*a, **k):
        raise AssertionError("the driver collected manifest rows")
    monkeypatch.setattr(sweep_run, "read_manifest", refuse)
    monkeypatch.setattr(sweep_run, "Collector", refuse)
    monkeypatch.setattr(Store, "index", refuse)
    for name in ("take_all", "to_pandas", "iter_rows"):
        monkeypatch.setattr(ray.data.Dataset, name, refuse)
    seen, iterate = [], ray.data.Dataset.iter_batches

    def watched(self, *a, **k):
        for b in iterate(self, *a, **k):
            seen.append((set(b), len(next(iter(b.values())))))
            yield b
    monkeypatch.setattr(ray.data.Dataset, "iter_batches", watched)
    s = run_scan(_cfg(sample, tmp_path, engine="ray"))
    assert s["streaming"] and seen
    assert all(cols == {"rows"} and n == 1 for cols, n in seen)  # one count per block, nothing else
    assert s["rows_in"] == s["rows_scanned"] + s["rows_errored"] == local_run[0]["rows_in"]
    assert _pairs(s) == _pairs(local_run[0])
    errors = lambda summary: sorted((r["item_id"], r["image_id"], r["error_type"])  # noqa: E731
                                    for r in pq.read_table(summary["outputs"]["errors"]).to_pylist())
    assert errors(s) == errors(local_run[0])
    assert not (tmp_path / "_checkpoints" / "t").exists()  # published: the workers' parts are gone

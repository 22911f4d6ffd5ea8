"""The streaming scan (engine ``ray``): the driver plans, watches and publishes; no manifest row,
flag or error row passes through it while the workers run.

    manifest files ─ read tasks (validated; each row's ordinal: file << 40 | row)
      ─ hash shuffle on (item_id, image_id), blocks sorted (what Ray's groupby().map_groups does);
        inputs that fit one partition go to one block without it (``by_key``)
      ─ per block: the earlier row of a key kept, later ones DuplicateRow, rows without item_id
        MissingItemId (error rows from here on), rows an earlier attempt finished dropped
      ─ content keys (store on) ─ fetch ─ detect[+embed] ─ (OCR) ─ (embed) ─ match + decide, and
        the matcher writes its block as one part under the run's checkpoint folder (rows/)

Blocks hold whole images from detect to the writer (the embed and match stages take whole
blocks), so a part never holds half an image. The parts are the checkpoint: a resumed run (same
run id, same inputs and settings) drops the rows whose ordinals are in them, inside the same
shuffle, and publishes the parts of both attempts. Publishing streams the parts, one at a time,
into the queue files, the errors file, the embedding store and its flag ledger
(``publish_parts``), and sums the counters; then logoscan.output moves them into place.

An incremental scan adds the store's index (read by Ray Data from its parts) to the shuffle: each
image's plan (new, changed, unknown, reused) is made there, and reused images are read once per
store part and matched without fetch, detect or embed. ``rematch`` (``build_rematch``) joins the
index, the flag ledger (what reviewers were shown) and an optional manifest the same way.

Why our own read tasks and part writer, not ``ray.data.read_parquet`` / ``write_parquet``: the
"earlier row" rule needs each row's place in the manifest, which read_parquet does not give; and
resuming needs each part written whole (a local rename or one S3 PUT: storage.write_bytes) under
the schema of the contract (schema.STAGED), with each block's stage seconds in its metadata.
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logoscan import storage
from logoscan.log import get_logger
from logoscan.metrics import PREFIX
from logoscan.stages import PASSENGER
from logoscan.schema import ERRORS, FLAGGED, STAGED, STORE_FLAGS, STORE_REGIONS, SchemaError, parquet_files, \
    validate_manifest

log = get_logger("logoscan.sweep")

ROW_BITS = 40           # an ordinal is file_index << ROW_BITS | row: 2**40 rows a file, 2**23 files
READ_ROWS = 65_536      # rows a read task hands on at a time
SHUFFLE_ROWS = 250_000  # manifest rows per shuffle partition
MISSING_ID = "item_id is null or empty: a reviewer could not act on this row; not scanned"
DUPLICATE = "repeats an earlier (item_id, image_id); scanned once"


# ------------------------------------------------------------------ the manifest, in the driver: files only

def manifest_files(uri: str, carry: tuple) -> tuple[list[tuple[str, int]], pa.Schema]:
    """The manifest's files and their row counts (Parquet footers), each file's columns checked
    against the contract before any work; and the types of the carried columns."""
    stray = storage.other_files(uri, ".parquet")
    if stray:
        raise SchemaError(f"the manifest folder {uri} holds {len(stray)} file(s) that are not .parquet "
                          f"(e.g. {stray[:3]}): their rows would be scanned nowhere. Convert them to Parquet or "
                          "move them out (names starting with '_' or '.' are skipped)")
    files, carried = [], {}
    for f in parquet_files(uri, "manifest"):
        fs, path = storage.resolve(f)
        try:
            meta = pq.read_metadata(fs.open_input_file(path))
            schema = meta.schema.to_arrow_schema()
        except Exception as e:
            raise SchemaError(f"{f}: not a readable Parquet file ({e})") from e
        validate_manifest(schema.empty_table(), f)
        missing = [c for c in carry if c not in schema.names]
        if missing:
            raise SchemaError(f"{f}: carry_columns {missing} are not in the manifest")
        for c in carry:
            carried.setdefault(c, schema.field(c).type)
        files.append((f, meta.num_rows))
    if len(files) >= 1 << (63 - ROW_BITS):
        raise SchemaError(f"the manifest has {len(files)} files; at most {1 << (63 - ROW_BITS)} are supported")
    return files, pa.schema([(f"carry.{c}", t) for c, t in carried.items()])


# ------------------------------------------------------------------ Ray Data tasks (pure batch functions)

def read_rows(items: pa.Table, carry: tuple):
    """A read task: each file's rows, validated, as blocks of the shuffle's input shape."""
    for f, index in zip(items.column("file").to_pylist(), items.column("index").to_pylist()):
        fs, path = storage.resolve(f)
        names = pq.read_schema(fs.open_input_file(path)).names
        wanted = ["item_id", "image_uri", "image_id", "image_fingerprint", *carry]
        at = 0
        for rb in pq.ParquetFile(fs.open_input_file(path)).iter_batches(
                batch_size=READ_ROWS, columns=[c for c in dict.fromkeys(wanted) if c in names]):
            t = validate_manifest(pa.Table.from_batches([rb]), f)
            yield shuffle_rows(t, (index << ROW_BITS) + at, carry)
            at += t.num_rows


def shuffle_rows(t: pa.Table, first: int, carry: tuple) -> pa.Table:
    """Manifest rows as the shuffle takes them: the key, the ordinal, the manifest's own error."""
    n = t.num_rows
    item = t.column("item_id")
    ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(item)), 0), False)
    image_id = t.column("image_id").cast(pa.string())
    fp = t.column("image_fingerprint") if "image_fingerprint" in t.column_names else pa.nulls(n, pa.string())
    nul = pa.nulls(n, pa.string())
    cols = {
        "item_id": item, "image_id": image_id, "image_uri": t.column("image_uri"),
        "x_key": _key(item, image_id), "x_ord": pa.array(np.arange(first, first + n, dtype=np.int64)),
        "x_fingerprint": fp.cast(pa.string()), "x_mark": pa.array([""] * n, pa.string()),
        "x_stored": nul, "x_stored_ck": nul, "x_shown": pa.array([""] * n, pa.string()),
        "error_stage": pc.if_else(ok, "", "manifest"), "error_type": pc.if_else(ok, "", "MissingItemId"),
        "error_message": pc.if_else(ok, "", MISSING_ID),
    }
    for c in carry:
        cols[f"x_carry.{c}"] = t.column(c)
    return pa.table(cols)


def _key(item, image_id):
    return pc.binary_join_element_wise(pc.fill_null(item, ""), pc.fill_null(image_id, ""), "\x1f")


def marker_rows(t: pa.Table, mark: str, carry_schema: pa.Schema, parts: dict | None = None) -> pa.Table:
    """Rows that join the manifest inside the shuffle, in its input shape: ``done`` (an earlier
    attempt's finished ordinals, from its parts), ``stored`` (the embedding store's index: an
    image's content key and the part holding it; ``parts`` maps Ray's path to the part's URI) or
    ``shown`` (the store's flag ledger: a flag reviewers were shown, for a rematch)."""
    n = t.num_rows
    nul = pa.nulls(n, pa.string())
    stored, shown = mark == "stored", mark == "shown"
    cols = {"item_id": t.column("item_id"), "image_id": t.column("image_id"), "image_uri": nul,
            "x_key": _key(t.column("item_id"), t.column("image_id")),
            "x_ord": t.column("ordinal") if mark == "done" else pa.array(np.full(n, -1, np.int64)),
            "x_fingerprint": nul, "x_mark": pa.array([mark] * n, pa.string()),
            "x_stored": pa.array([parts[p] for p in t.column("path").to_pylist()], pa.string()) if stored else nul,
            "x_stored_ck": t.column("content_key") if stored else nul,
            "x_shown": pc.binary_join_element_wise(
                pc.fill_null(t.column("content_key"), ""), t.column("region").cast(pa.string()),
                t.column("label"), "\x1f") if shown else pa.array([""] * n, pa.string()),
            "error_stage": nul, "error_type": nul, "error_message": nul}
    for f in carry_schema:
        cols["x_" + f.name] = pa.nulls(n, f.type)
    return pa.table(cols)


def dedup(block: pa.Table) -> pa.Table:
    """One shuffle partition (every row of a key is in it): of a key's identified rows the
    earliest in the manifest is scanned, later ones become DuplicateRow error rows; rows an
    earlier attempt of the run finished (``done`` markers) are dropped; a row the store holds
    gets the newest stored part and content key of its image (``stored`` markers)."""
    drop = ["x_key", "x_mark"]
    if block.num_rows == 0:
        return block.drop_columns(drop)
    block = block.sort_by([("x_key", "ascending"), ("x_ord", "ascending")])
    mark = block.column("x_mark")
    rows = block.filter(pc.equal(mark, ""))
    key = np.asarray(rows.column("x_key").to_pylist(), dtype=object)
    identified = np.asarray(rows.column("error_type").to_pylist(), dtype=object) == ""
    # identified rows in key order: the first of each key is kept
    idx = np.flatnonzero(identified)
    later = np.zeros(len(key), bool)
    if len(idx):
        k = key[idx]
        later[idx[1:]] = k[1:] == k[:-1]
    if later.any():
        mask = pa.array(later)
        for name, value in (("error_stage", "manifest"), ("error_type", "DuplicateRow"), ("error_message", DUPLICATE)):
            rows = rows.set_column(rows.schema.get_field_index(name), name,
                                   pc.if_else(mask, value, rows.column(name)))
    done = block.filter(pc.equal(mark, "done"))
    if done.num_rows:
        rows = rows.filter(pc.invert(pc.is_in(rows.column("x_ord"), value_set=done.column("x_ord").combine_chunks())))
    stored = block.filter(pc.equal(mark, "stored"))
    if stored.num_rows and rows.num_rows:
        stored = stored.sort_by([("x_key", "ascending"), ("x_stored", "descending")])  # parts' names: UTC time
        skey = np.asarray(stored.column("x_key").to_pylist(), dtype=object)
        newest = stored.take(pa.array(np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])))
        at = {k: i for i, k in enumerate(newest.column("x_key").to_pylist())}
        pick = [at.get(k) for k in rows.column("x_key").to_pylist()]
        for name in ("x_stored", "x_stored_ck"):
            rows = rows.set_column(rows.schema.get_field_index(name), name, newest.column(name).take(pa.array(pick)))
    return rows.drop_columns(drop)


def content(batch: pa.Table, roots: tuple, threads: int, incremental: bool) -> pa.Table:
    """Each row's content key for the embedding store ('' where the image cannot be read: such a
    row is scanned and its fetch gives it its error row), and, for an incremental scan, its plan:
    ``reused`` (the store holds this content under these models: matched from the store),
    ``new``, ``changed`` or ``unknown`` (no content key) — scanned."""
    from logoscan.stages import readable
    from logoscan.store import content_keys
    n = batch.num_rows
    uris = batch.column("image_uri").to_pylist()
    err = batch.column("error_type").to_pylist()
    ok = [i for i in range(n) if not err[i] and readable(uris[i], roots)]
    keys = [""] * n
    if ok:
        sub = pa.table({"image_uri": batch.column("image_uri").take(ok),
                        "image_fingerprint": batch.column("x_fingerprint").take(ok)})
        for i, k in zip(ok, content_keys(sub, threads)):
            keys[i] = k or ""
    batch = batch.append_column("x_content", pa.array(keys, pa.string()))
    if not incremental:
        return batch.append_column("x_plan", pa.array([""] * n, pa.string()))
    have, stored = batch.column("x_stored_ck").to_pylist(), batch.column("x_stored").to_pylist()
    plan = ["" if err[i] else "unknown" if not keys[i] else "new" if stored[i] is None else
            "changed" if have[i] != keys[i] else "reused" for i in range(n)]
    return batch.append_column("x_plan", pa.array(plan, pa.string()))


def write_part(batch: dict, folder: str, carry_schema: pa.Schema) -> dict:
    """A worker writes its block (decided rows, whole images) as one part; returns the number of
    manifest rows it finished (the driver's progress)."""
    n = len(batch["kind"])
    cols = {}
    for f in STAGED:
        name = {"ordinal": "x_ord", "content_key": "x_content", "plan": "x_plan"}.get(f.name, f.name)
        v = batch.get(name)
        if v is None:
            cols[f.name] = pa.nulls(n, f.type)
        elif f.name == "embedding":
            cols[f.name] = pa.array([list(e) if k == "region" else None for k, e in zip(batch["kind"], v)], f.type)
        elif f.name == "box":
            cols[f.name] = pa.array(np.asarray(v, np.float32).reshape(n, 4).tolist(), f.type)
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array([x if isinstance(x, str) and x else None for x in v], f.type)
        elif pa.types.is_binary(f.type):
            cols[f.name] = pa.array([x or None for x in v], f.type)
        else:
            cols[f.name] = pa.array(np.asarray(v), f.type, from_pandas=True)
    if "x_shown" in batch:  # a rematch: the flags reviewers were shown before for each image
        # a scan's rows carry "" (an all-null passenger can reach here as a float NaN column)
        shown = [set(x.split("\x1e")) if isinstance(x, str) else set() for x in batch["x_shown"]]
        cols["shown"] = pa.array([f"{c or ''}\x1f{r}\x1f{lab}" in sh for c, r, lab, sh in zip(
            cols["content_key"].to_pylist(), batch["region"], batch.get("label", [""] * n), shown)], pa.bool_())
    for f in carry_schema:
        v = batch["x_" + f.name]
        cols[f.name] = pa.array(list(v), from_pandas=True).cast(f.type) if len(v) else pa.nulls(0, f.type)
    seconds = {k[len(PREFIX):]: float(np.sum(v)) for k, v in batch.items() if k.startswith(PREFIX)}
    table = pa.table(cols, schema=pa.schema(list(STAGED) + list(carry_schema)).with_metadata(
        {"logoscan.stage_seconds": json.dumps(seconds)}))
    if n:
        storage.write_bytes(storage.join(folder, f"part-{uuid.uuid4().hex}.parquet"), _parquet(table))
    images = len(set(zip(batch.get("x_ord", ()), batch["item_id"], batch["image_id"]))) if n else 0
    return {"rows": np.asarray([images], np.int64)}


def _parquet(table: pa.Table) -> bytes:
    import io
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# ------------------------------------------------------------------ the dataset

def by_key(ds, rows: int):
    """Every row of a key in one block, ``rows`` (all inputs together) cut into partitions of about
    ``SHUFFLE_ROWS``: Ray's hash shuffle on ``x_key``. Where they fit in one partition, all rows go
    to one block without the shuffle (the same block; ``dedup`` and ``rematch_rows`` sort their
    block themselves): the shuffle's tasks cost a 600-image sweep on 2 cores 8% of its time
    (docs/bench/throughput.md)."""
    n = max(1, math.ceil(rows / SHUFFLE_ROWS))
    return ds.repartition(1) if n == 1 else ds.repartition(n, keys=["x_key"], sort=True)


def build(files: list[tuple[str, int]], carry_schema: pa.Schema, done_parts: list[str], parts_dir: str, cfg,
          plan, cpa: float, match_kwargs: dict, detect_kwargs: dict, fused: bool, n_emb: int, store=None):
    """The whole sweep as one Ray dataset whose rows are each block's finished-row count. With
    ``store`` and ``store.incremental``: the store's index joins the manifest in the shuffle, and
    images it holds unchanged are matched from their stored embeddings (no fetch, detect, embed)."""
    import ray

    from logoscan.actors import (DetectActor, DetectEmbedActor, EmbedActor, MatchActor, OcrActor, fetch,
                                  model_pool_options)
    bounded_block_stats()
    r = cfg.ray
    model_pool = model_pool_options(r, cpa)  # every model pool's CPUs, GPUs, memory and environment
    carry = tuple(f.name[len("carry."):] for f in carry_schema)
    incremental = store is not None and cfg.store.incremental
    ds = ray.data.from_items([{"file": f, "index": i} for i, (f, _) in enumerate(files)],
                             override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(read_rows, fn_kwargs={"carry": carry}, batch_size=1, batch_format="pyarrow", num_cpus=0.25)
    if done_parts:
        done = ray.data.read_parquet(done_parts, columns=["item_id", "image_id", "ordinal"])
        ds = ds.union(done.map_batches(marker_rows, fn_kwargs={"mark": "done", "carry_schema": carry_schema},
                                       batch_size=None, batch_format="pyarrow", num_cpus=0.25))
    stored_parts = store.region_files() if incremental else []
    if stored_parts:  # the index, read by Ray Data: the driver lists the parts, never their rows
        index = ray.data.read_parquet(stored_parts, columns=["item_id", "image_id", "content_key"],
                                      include_paths=True)
        by_path = {storage.resolve(f)[1]: f for f in stored_parts}
        ds = ds.union(index.map_batches(marker_rows, fn_kwargs={"mark": "stored", "carry_schema": carry_schema,
                                                                "parts": by_path},
                                        batch_size=None, batch_format="pyarrow", num_cpus=0.25))
    # the index's rows share the shuffle's blocks too: a large store beside a small manifest
    # must not all land in one block
    ds = by_key(ds, sum(n for _, n in files) + sum(_num_rows(f) for f in stored_parts))
    ds = ds.map_batches(dedup, batch_size=None, batch_format="pyarrow", num_cpus=0.25)
    # a shuffle partition is one block: cut into blocks of ``fetch_batch`` images, so the pools
    # work in parallel and each part (what a killed run redoes) holds one batch of images
    ds = ds.repartition(target_num_rows_per_block=r.fetch_batch)
    if store is not None:
        ds = ds.map_batches(content, fn_kwargs={"roots": cfg.fetch.allowed_roots, "threads": cfg.store.stat_threads,
                                                "incremental": incremental},
                            batch_size=r.fetch_batch, batch_format="pyarrow", num_cpus=0.25)
    writes = dict(match_kwargs, write_parts={"folder": parts_dir, "carry_schema": carry_schema})
    reused = None
    if incremental:  # two branches of the planned rows (kept in the object store, not the driver)
        ds = ds.materialize()
        reused = ds.map_batches(planned, fn_kwargs={"reused": True}, batch_size=None, batch_format="pyarrow",
                                num_cpus=0.25)
        # one call per store part: each part is read once, for every reused image it holds
        reused = reused.groupby("x_stored").map_groups(
            read_stored, fn_kwargs={"store": store, "batch_rows": cfg.match.search_batch}, batch_format="pyarrow",
            num_cpus=0.25)
        reused = reused.map_batches(MatchActor, fn_constructor_kwargs=writes, batch_size=None, batch_format="numpy",
                                    compute=matcher_pool(r), num_cpus=r.matcher_cpus)
        ds = ds.map_batches(planned, fn_kwargs={"reused": False}, batch_size=None, batch_format="pyarrow",
                            num_cpus=0.25)
    ds = ds.map_batches(fetch, fn_kwargs={"cfg": cfg.fetch}, batch_size=r.fetch_batch,
                        batch_format="numpy", num_cpus=0.25)
    ds = ds.map_batches(DetectEmbedActor if fused else DetectActor,
                        fn_constructor_kwargs=dict(detect_kwargs, emb_cfg=cfg.embedder) if fused else detect_kwargs,
                        batch_size=r.fetch_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=r.detector_actors), **model_pool)
    # from here on whole blocks (batch_size None): an image's rows, made by one detect call, stay together
    if cfg.ocr.enabled:
        ds = ds.map_batches(OcrActor, fn_constructor_kwargs=dict(ocr_cfg=cfg.ocr, run_id=plan.run_id,
                                                                 keep_freed_mib=cfg.detector.keep_freed_mib),
                            batch_size=None, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=cfg.ocr.actors), **model_pool)
    if not fused:
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=dict(emb_cfg=cfg.embedder, run_id=plan.run_id,
                                                                   keep_freed_mib=cfg.detector.keep_freed_mib),
                            batch_size=None, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_emb), **model_pool)
    # the matcher writes the block it decided (one task and one object-store hop per block fewer
    # than a writer stage of its own: the writer cost 17 of 50 worker-seconds at 100k error rows)
    ds = ds.map_batches(MatchActor, fn_constructor_kwargs=writes, batch_size=None, batch_format="numpy",
                        compute=matcher_pool(r), num_cpus=r.matcher_cpus)
    return ds if reused is None else ds.union(reused)


def matcher_pool(r):
    """The matcher actors' pool (scan, reused images, rematch): ``ray.matcher_actors`` of them,
    ``ray.matcher_tasks_in_flight`` blocks queued on each."""
    import ray
    return ray.data.ActorPoolStrategy(size=max(1, r.matcher_actors),
                                      max_tasks_in_flight_per_actor=r.matcher_tasks_in_flight)


def rematch_rows(block: pa.Table, restrict: bool) -> pa.Table:
    """One shuffle partition of a rematch: each image's newest stored entry (restricted to the
    manifest's images when ``restrict``), with the flags reviewers were shown for it (``shown``
    markers) joined into ``x_shown``."""
    block = block.sort_by([("x_key", "ascending"), ("x_stored", "descending")])  # parts' names: UTC time
    mark = block.column("x_mark")
    stored = block.filter(pc.equal(mark, "stored"))
    if stored.num_rows:
        skey = np.asarray(stored.column("x_key").to_pylist(), dtype=object)
        stored = stored.take(pa.array(np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])))
    if restrict:
        stored = stored.filter(pc.is_in(stored.column("x_key"), value_set=block.filter(
            pc.equal(mark, "")).column("x_key").combine_chunks()))
    shown: dict[str, list] = {}
    for k, v in zip(*(block.filter(pc.equal(mark, "shown")).column(c).to_pylist() for c in ("x_key", "x_shown"))):
        shown.setdefault(k, []).append(v)
    stored = stored.set_column(stored.schema.get_field_index("x_shown"), "x_shown", pa.array(
        ["\x1e".join(shown.get(k, ())) for k in stored.column("x_key").to_pylist()], pa.string()))
    return stored.append_column("x_content", stored.column("x_stored_ck")).drop_columns(["x_key", "x_mark"])


def build_rematch(store, ledger_files: list[str], manifest_files_: list[tuple[str, int]], parts_dir: str, cfg,
                  match_kwargs: dict):
    """A rematch as one Ray dataset (rows: each block's image count): the store's index, its
    ledger and (optionally) the manifest meet in a hash shuffle on the key; each store part is read
    once for the images it holds newest; the pool matches and writes the parts."""
    import ray

    from logoscan.actors import MatchActor
    bounded_block_stats()
    empty = pa.schema([])
    parts = store.region_files()
    by_path = {storage.resolve(f)[1]: f for f in parts}
    ds = ray.data.read_parquet(parts, columns=["item_id", "image_id", "content_key"], include_paths=True)
    ds = ds.map_batches(marker_rows, fn_kwargs={"mark": "stored", "carry_schema": empty, "parts": by_path},
                        batch_size=None, batch_format="pyarrow", num_cpus=0.25)
    if ledger_files:
        shown = ray.data.read_parquet(ledger_files, columns=["item_id", "image_id", "content_key", "region", "label"])
        ds = ds.union(shown.map_batches(marker_rows, fn_kwargs={"mark": "shown", "carry_schema": empty},
                                        batch_size=None, batch_format="pyarrow", num_cpus=0.25))
    if manifest_files_:
        m = ray.data.from_items([{"file": f, "index": i} for i, (f, _) in enumerate(manifest_files_)],
                                override_num_blocks=len(manifest_files_))
        ds = ds.union(m.map_batches(read_rows, fn_kwargs={"carry": ()}, batch_size=1, batch_format="pyarrow",
                                    num_cpus=0.25))
    ds = by_key(ds, sum(n for _, n in manifest_files_) + sum(_num_rows(f) for f in parts))
    ds = ds.map_batches(rematch_rows, fn_kwargs={"restrict": bool(manifest_files_)}, batch_size=None,
                        batch_format="pyarrow", num_cpus=0.25)
    ds = ds.groupby("x_stored").map_groups(read_stored, fn_kwargs={"store": store,
                                                                   "batch_rows": cfg.match.search_batch},
                                           batch_format="pyarrow", num_cpus=0.25)
    return ds.map_batches(MatchActor, fn_constructor_kwargs=dict(
        match_kwargs, write_parts={"folder": parts_dir, "carry_schema": empty}), batch_size=None,
        batch_format="numpy", compute=matcher_pool(cfg.ray), num_cpus=cfg.ray.matcher_cpus)


def _num_rows(f: str) -> int:
    fs, path = storage.resolve(f)
    return pq.read_metadata(fs.open_input_file(path)).num_rows


def planned(batch: pa.Table, reused: bool) -> pa.Table:
    """The rows an incremental plan matches from the store (``reused``), or those it scans."""
    is_reused = pc.fill_null(pc.equal(batch.column("x_plan"), "reused"), False)
    return batch.filter(is_reused if reused else pc.invert(is_reused))


def read_stored(batch: pa.Table, store, batch_rows: int):
    """Reused images' stored regions (already embedded, as the embed stage's output), with their
    manifest row's ordinal, content key and plan; ``batch`` holds the images of one store part."""
    keys = list(zip(batch.column("item_id").to_pylist(), batch.column("image_id").to_pylist()))
    at = {k: i for i, k in enumerate(keys)}
    riders = [c for c in batch.column_names if c.startswith(PASSENGER) and c not in ("x_stored", "x_stored_ck")]
    for b in store.entries(dict(zip(keys, batch.column("x_stored").to_pylist())), batch_rows):
        rows = pa.array([at[k] for k in zip(b["item_id"], b["image_id"])], pa.int64())
        for c in riders:  # the manifest row's (or the rematch plan's) columns follow each region
            b[c] = batch.column(c).take(rows).to_numpy(zero_copy_only=False)
        b["x_plan"] = np.asarray(["reused"] * len(rows), dtype=object)
        yield b


def bounded_block_stats() -> None:
    """Keep the driver's memory flat over a night's blocks (logoscan.sweep.blockstats)."""
    from logoscan.sweep.blockstats import register
    register()


def run(ds, total: int, resumed: int, run_id: str) -> None:
    """Execute, reading back only each block's image count: progress in the log (``total`` 0:
    not known)."""
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    from logoscan import metrics
    t0 = last = time.time()
    done = resumed
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        done += int(np.sum(b["rows"]))
        now = time.time()
        if now - last >= 10 or (total and done >= total):
            last = now
            rate = (done - resumed) / max(now - t0, 1e-9)
            if total:  # a rematch does not know its total (the driver never reads the store's index)
                metrics.progress(run_id, done / total, rate)
            log.info("scan.progress", done=done, total=total or None,
                     pct=round(100 * done / total, 1) if total else None, img_per_s=round(rate, 2),
                     eta_s=round((total - done) / rate, 1) if rate and total else None)


# ------------------------------------------------------------------ resuming

def parts(folder: str) -> list[str]:
    """The parts under ``folder`` that are whole (a torn or unreadable one is deleted: its rows
    are done again)."""
    try:
        found = storage.list_files(folder, ".parquet")
    except FileNotFoundError:
        return []
    out = []
    for f in found:
        fs, path = storage.resolve(f)
        try:
            pq.read_metadata(fs.open_input_file(path))
            out.append(f)
        except Exception:  # noqa: BLE001 - torn by a killed worker: redo its rows
            log.warning("scan.part_dropped", part=f)
            storage.delete_file(f)
    return out


def rows_in(files: list[str]) -> int:
    """The manifest rows the parts finished (each part holds whole images: one ordinal each)."""
    n = 0
    for f in files:
        fs, path = storage.resolve(f)
        n += pc.count_distinct(pq.read_table(path, filesystem=fs, columns=["ordinal"]).column("ordinal")).as_py()
    return n


# ------------------------------------------------------------------ publishing: one part at a time

class Published:
    """What publishing the parts found: the summary's counters."""

    def __init__(self):
        self.scanned = self.reused = self.errored = self.regions = self.flagged = self.flagged_all = 0
        self.written = 0
        self.plans: Counter = Counter()  # images per incremental plan: new, changed, unknown, reused
        self.by_queue: Counter = Counter()
        self.errors_by_stage: Counter = Counter()
        self.stage_seconds: Counter = Counter()
        self.refused = 0


class RowGroups:
    """A Parquet file written from many small tables in row groups of up to ``rows`` rows or
    ``nbytes`` bytes. Why not ParquetWriter.write_table on each part's rows: every call ends a row
    group, and the writer keeps every row group's metadata in memory until it closes: at 2M
    manifest rows, 15,625 parts, that was the publisher's growth in the driver
    (docs/bench/driver_memory.md)."""

    def __init__(self, path: str, schema: pa.Schema, rows: int = 8_192, nbytes: int = 2 << 20):
        fs, p = storage.resolve(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        self.stream = fs.open_output_stream(p)  # a ParquetWriter does not close the stream it was given
        self.writer = pq.ParquetWriter(self.stream, schema, compression="zstd")
        self.rows, self.nbytes = rows, nbytes
        self.pending: list[pa.Table] = []
        self.pending_rows = self.pending_bytes = 0

    def write_table(self, t: pa.Table) -> None:
        self.pending.append(t)
        self.pending_rows += t.num_rows
        self.pending_bytes += t.nbytes
        if self.pending_rows >= self.rows or self.pending_bytes >= self.nbytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending).combine_chunks())
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0

    def close(self) -> None:
        try:
            self.flush()
            self.writer.close()
        finally:
            self.stream.close()  # an S3 object is complete (uploaded) only now


def publish_parts(files: list[str], out: str, run_id: str, run_date: str, common: dict, carry_schema: pa.Schema,
                  store=None, store_every: int = 256, ledger: str | None = None) -> Published:
    """Stream the parts into the staged queue files and errors file (logoscan.output.staged), the
    store's new region parts (images scanned with a content key) and the flags for the store's
    ledger (``ledger``: a file of the run's checkpoint folder, moved in after publishing).
    One part in memory at a time."""
    from logoscan import output
    from logoscan.store import write_region_part
    got = Published()
    writers: dict[str, RowGroups] = {}
    flagged_schema = pa.schema(list(FLAGGED) + [pa.field(f.name[len("carry."):], f.type) for f in carry_schema])

    def writer(path: str, schema: pa.Schema) -> RowGroups:
        if path not in writers:
            writers[path] = RowGroups(path if path == ledger else output.staged(out, run_id, path), schema)
        return writers[path]

    errors_file = output.errors_path(out, run_date, run_id)
    writer(errors_file, ERRORS)
    pending_store: list[pa.Table] = []
    pending_images = 0
    try:
        for f in files:
            fs, path = storage.resolve(f)
            t = pq.read_table(path, filesystem=fs)
            meta = t.schema.metadata or {}
            got.stage_seconds.update(json.loads(meta.get(b"logoscan.stage_seconds", b"{}")))
            is_err = pc.equal(t.column("kind"), "error")
            err = t.filter(is_err)
            failed = pa.array(np.unique(err.column("ordinal").to_numpy()), pa.int64())
            if err.num_rows:  # one error row per image (an image whose embedding failed has one per region)
                err = err.sort_by("ordinal")
                err = err.take(pa.array(np.unique(err.column("ordinal").to_numpy(), return_index=True)[1]))
                n = err.num_rows
                got.errored += n
                got.errors_by_stage.update(err.column("error_stage").to_pylist())
                got.refused += sum(1 for e in err.column("error_type").to_pylist() if e == "PermissionError")
                writer(errors_file, ERRORS).write_table(pa.table({
                    "run_id": pa.array([run_id] * n, pa.string()), "item_id": err.column("item_id"),
                    "image_id": err.column("image_id"), "image_uri": err.column("image_uri"),
                    "stage": err.column("error_stage"), "error_type": err.column("error_type"),
                    "message": err.column("error_message"),
                    "scanned_at": pa.array([common["scanned_at"]] * n, ERRORS.field("scanned_at").type)},
                    schema=ERRORS))
            ok = t.filter(pc.invert(pc.is_in(t.column("ordinal"), value_set=failed)))
            reused = pc.fill_null(pc.equal(ok.column("plan"), "reused"), False)
            got.reused += _images(ok.filter(reused))
            got.scanned += _images(ok.filter(pc.invert(reused)))
            for p_, n_ in _plans(t).items():
                got.plans[p_] += n_
            got.regions += pc.sum(pc.equal(ok.column("kind"), "region")).as_py() or 0
            flags = ok.filter(pc.fill_null(ok.column("flagged"), False))
            if flags.num_rows:
                new = flags.filter(pc.invert(pc.fill_null(flags.column("shown"), False)))  # a rematch's: not shown
                got.flagged += new.num_rows
                got.flagged_all += flags.num_rows
                for q in sorted(set(new.column("queue").to_pylist())):
                    rows = new.filter(pc.equal(new.column("queue"), q))
                    got.by_queue[q] += rows.num_rows
                    writer(output.queue_path(out, q, run_date, run_id), flagged_schema).write_table(
                        flagged_table(rows, common, flagged_schema))
                if ledger is not None:
                    writer(ledger, STORE_FLAGS).write_table(pa.table({
                        "item_id": flags.column("item_id"), "image_id": flags.column("image_id"),
                        "content_key": flags.column("content_key"), "region": flags.column("region"),
                        "label": flags.column("label"), "logo_id": flags.column("logo_id"),
                        "distance": flags.column("distance"),
                        "run_id": pa.array([run_id] * flags.num_rows, pa.string())}, schema=STORE_FLAGS))
            if store is not None:  # newly scanned images (reused ones are in the store already)
                keep = ok.filter(pc.and_(pc.invert(pc.is_null(ok.column("content_key"))), pc.invert(reused)))
                if keep.num_rows:
                    pending_store.append(keep)
                    pending_images += pc.count_distinct(keep.column("ordinal")).as_py()
                if pending_images >= store_every:
                    got.written += write_region_part(store, run_id, pending_store)
                    pending_store, pending_images = [], 0
        if store is not None and pending_store:
            got.written += write_region_part(store, run_id, pending_store)
    finally:
        for w in writers.values():
            w.close()
    got.queues = sorted({q for q in got.by_queue})
    return got


def _images(t: pa.Table) -> int:
    """Images in staged rows: a manifest row (ordinal) of an image (a rematch's rows have none)."""
    return t.group_by(["ordinal", "item_id", "image_id"]).aggregate([]).num_rows if t.num_rows else 0


def _plans(t: pa.Table) -> dict:
    """Images per incremental plan (new, changed, unknown, reused) in a part."""
    planned = t.filter(pc.invert(pc.is_null(t.column("plan"))))
    return {p: _images(planned.filter(pc.equal(planned.column("plan"), p)))
            for p in set(planned.column("plan").to_pylist())}


def flagged_table(rows: pa.Table, common: dict, schema: pa.Schema) -> pa.Table:
    n = rows.num_rows
    cols = {}
    for f in schema:
        if f.name in common:
            cols[f.name] = pa.array([common[f.name]] * n, f.type)
        elif f.name in rows.column_names:
            cols[f.name] = rows.column(f.name).cast(f.type)
        else:
            cols[f.name] = rows.column(f"carry.{f.name}")
    return pa.table(cols, schema=schema)

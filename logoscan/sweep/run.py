"""The two runs: ``run_scan`` (manifest → engines → review queues, errors, store, summary) and
``run_rematch`` (the embedding store → matcher → the flags reviewers have not been shown). Each
plans (logoscan.sweep.plan), runs an engine (logoscan.sweep.engines) and publishes
(logoscan.sweep.publish, logoscan.output: ``_SUCCESS`` last)."""
from __future__ import annotations

import dataclasses
import time

import pyarrow as pa
from datetime import datetime, timezone

from logoscan import config_io, metrics, output, storage
from logoscan.config import RematchConfig, ScanConfig
from logoscan.gallery import MilvusUnavailable, redact
from logoscan.lite_server import serving
from logoscan.log import configure, get_logger
from logoscan.runlock import RunLock
from logoscan.schema import ERRORS, FLAGGED
from logoscan.sweep import engines, publish, stream
from logoscan.sweep.collect import Collector
from logoscan.sweep.errors import ScanError
from logoscan.sweep.inputs import (allowed_roots, inside, manifest_errors, read_manifest, split_duplicates,
                                   split_unidentified, without)
from logoscan.sweep.plan import (make_plan, match_version, open_store, plan_store, resume, resume_streaming,
                                 run_ids)

log = get_logger("logoscan.sweep")


def _required(cfg, names: tuple, what: str) -> None:
    for name in names:
        if not getattr(cfg, name):
            raise ScanError(f"{what} needs {name} (flag --{name.replace('_', '-')} or config key {name!r})")


def _served(cfg):
    """Ray (before any Milvus client: gRPC threads in the driver break the Ray head's fork), then
    the URI this run searches: an embedded .db is served on loopback for a matcher actor pool."""
    if cfg.engine == "ray":
        engines.init_ray(cfg.ray)
    return serving(cfg.milvus_uri, enabled=cfg.engine == "ray" and cfg.ray.matcher_actors > 0)


def run_scan(cfg: ScanConfig) -> dict:
    _required(cfg, ("manifest", "milvus_uri", "out"), "scan")
    clash = sorted(set(cfg.carry_columns) & set(FLAGGED.names))
    if clash:  # the flagged rows would hold two columns of one name (readers refuse such a file)
        raise ScanError(f"carry_columns {clash} are columns of the flagged rows already; carry other columns")
    if inside(cfg.out, cfg.manifest):
        raise ScanError(f"--out {cfg.out} is inside the manifest folder {cfg.manifest}: the next run would read its "
                        "queues, errors and store as manifests. Write the outputs elsewhere")
    started, run_id, run_date = run_ids(cfg, "scan")
    configure(run_id)
    t0 = time.time()
    if streams(cfg):  # the manifest's files and columns checked here, its rows by the workers
        files, carry = stream.manifest_files(cfg.manifest, tuple(cfg.carry_columns))
        with RunLock(cfg.out, run_id):
            with _served(cfg) as uri:
                return _scan_streaming(cfg, files, carry, started, t0, run_id, run_date, uri)
    manifest = read_manifest(cfg.manifest, tuple(cfg.carry_columns))  # errors here: before any work
    with RunLock(cfg.out, run_id):  # one run id on one --out at a time
        with _served(cfg) as uri:
            return _scan(cfg, manifest, started, t0, run_id, run_date, uri)


def streams(cfg: ScanConfig) -> bool:
    """Whether the scan streams (logoscan.sweep.stream): the ray engine with a matcher actor pool.
    Driver matching (``ray.matcher_actors: 0``) and the in-process engine collect in the driver."""
    return cfg.engine == "ray" and cfg.ray.matcher_actors > 0


def _scan_streaming(cfg: ScanConfig, files: list, carry, started: datetime, t0: float, run_id: str,
                    run_date: str, uri: str) -> dict:
    cfg = dataclasses.replace(cfg, fetch=dataclasses.replace(cfg.fetch, allowed_roots=allowed_roots(cfg)))
    plan, cfg = make_plan(cfg, uri, run_id, run_date, started)
    ckpt, done_parts = resume_streaming(cfg, run_id, files, plan)
    if ckpt.meta.get("run_date") and not cfg.run_date:  # a resumed run keeps its first attempt's date
        plan = dataclasses.replace(plan, run_date=ckpt.meta["run_date"])
    ckpt.start(plan.run_date)
    total = sum(n for _, n in files)
    resumed = stream.rows_in(done_parts)
    store = open_store(cfg.store.uri or storage.join(cfg.out, "store"), plan.model_version, cfg.detector,
                       cfg.ocr) if cfg.store.write or cfg.store.incremental else None
    log.info("scan.start", manifest=cfg.manifest, files=len(files), rows=total, resumed=resumed, engine="ray",
             streaming=True, collection=cfg.collection, gallery_version=plan.gallery_version,
             detector=plan.detector["version"], embedder=plan.embedder_version, out=cfg.out)
    parts_dir = storage.join(ckpt.dir, "rows")
    cfg, fused, n_emb, cpa = engines.pools(cfg, cfg.ray.matcher_actors, total - resumed)
    ds = stream.build(files, carry, done_parts, parts_dir, cfg, plan, cpa,
                      engines.match_kwargs(cfg, plan, keep_embedding=store is not None),
                      engines.detect_kwargs(cfg, plan), fused, n_emb, store=store)
    t_run = time.time()
    try:
        stream.run(ds, total, resumed, run_id)
    except MilvusUnavailable as e:
        raise ScanError(f"{e}. Nothing was published; the rows finished so far are checkpointed"
                        + (f": run again with run id {run_id!r} to resume" if cfg.checkpoint_every else "")) from e
    t_publish = time.time()
    now = datetime.now(timezone.utc)
    common = {"run_id": run_id, "scanned_at": now, "model_version": plan.model_version,
              "gallery_version": plan.gallery_version}
    version = match_version(plan.gallery_version, plan.thresholds, cfg.ocr)
    writes = store if cfg.store.write else None
    ledger = storage.join(ckpt.dir, "ledger.parquet") if writes is not None else None
    output.begin_staging(cfg.out, run_id)
    got = stream.publish_parts(stream.parts(parts_dir), cfg.out, run_id, plan.run_date, common, carry,
                               store=writes, store_every=cfg.checkpoint_every or 256, ledger=ledger)
    if got.refused:
        log.warning("scan.refused", rows=got.refused, allowed_roots=list(cfg.fetch.allowed_roots),
                    note="image URIs outside the allowed roots were not read (set fetch.allowed_roots)")
    info = None if store is None else {"uri": redact(store.uri), "key": store.key,
                                       "incremental": cfg.store.incremental, "other_keys": store.other_keys(),
                                       **({k: got.plans.get(k, 0) for k in ("new", "changed", "unknown", "reused")}
                                          if cfg.store.incremental else {}),
                                       # not counted: the driver never reads the store's index
                                       **({"stored_images": None} if cfg.store.incremental else {}),
                                       "written": got.written}
    summary = publish.summary(
        plan, cfg, t0, rows_in=total, scanned=got.scanned, reused=got.reused, errored=got.errored,
        regions=got.regions,
        flagged=got.flagged, by_queue=dict(got.by_queue), errors_by_stage=dict(got.errors_by_stage),
        stage_seconds={"sweep": round(t_publish - t_run, 3), "publish_parts": round(time.time() - t_publish, 3)},
        store=info, rows_resumed=resumed, images_per_s=round(total / max(time.time() - t0, 1e-9), 2),
        stage_worker_seconds={k: round(v, 3) for k, v in sorted(got.stage_seconds.items())}, streaming=True)
    summary["outputs"] = output.publish_staged(cfg.out, run_id, plan.run_date, got.queues, summary,
                                               config_io.to_dict(cfg))
    if ledger is not None:  # what reviewers were shown against this gallery: `rematch` shows only what is new
        if got.flagged_all:
            writes.add_flags(version, run_id, ledger)
        else:
            writes.write_flags(version, run_id, [])  # an empty part still records this match (previous_match)
    ckpt.clear()  # published: nothing left to resume
    metrics.flagged(summary["flagged_by_queue"])
    log.info("scan.done", **{k: summary[k] for k in ("rows_in", "rows_scanned", "rows_reused", "rows_errored",
                                                     "rows_resumed", "regions", "flagged", "seconds",
                                                     "images_per_s", "flagged_by_queue", "errors_by_stage")},
             gallery_version=plan.gallery_version, engine="ray", streaming=True)
    return summary


def _scan(cfg: ScanConfig, manifest, started: datetime, t0: float, run_id: str, run_date: str, uri: str) -> dict:
    cfg = dataclasses.replace(cfg, fetch=dataclasses.replace(cfg.fetch, allowed_roots=allowed_roots(cfg)))
    identified, unidentified = split_unidentified(manifest)
    unique, dups = split_duplicates(identified)
    plan, cfg = make_plan(cfg, uri, run_id, run_date, started)
    ckpt, resumed = resume(cfg, run_id, unique, plan)
    if resumed and not cfg.run_date:
        plan = dataclasses.replace(plan, run_date=ckpt.meta.get("run_date", run_date))
    todo = without(unique, {img["key"] for img in resumed})
    sp = plan_store(cfg, run_id, unique, todo, plan.model_version) if cfg.store.write or cfg.store.incremental \
        else None
    reuse = sp.reuse if sp else {}
    to_scan = without(todo, set(reuse))
    log.info("scan.start", manifest=cfg.manifest, rows=manifest.num_rows, duplicates=dups.num_rows,
             resumed=len(resumed), reused=len(reuse), to_scan=to_scan.num_rows,
             engine=cfg.engine, collection=cfg.collection, gallery_version=plan.gallery_version,
             detector=plan.detector["version"], embedder=plan.embedder_version, out=cfg.out)
    if ckpt is not None:
        ckpt.start(plan.run_date)

    writer = sp.writer if sp else None
    col = Collector(unique.num_rows, ckpt, cfg.checkpoint_every, resumed, writer)
    col.run_id = run_id
    stage_s = {}
    try:
        if reuse:
            stage_s["stored_match"] = engines.run_stored(sp.store, reuse, cfg, plan, col)
        if to_scan.num_rows:
            stage_s.update((engines.run_local if cfg.engine == "local" else engines.run_ray)(to_scan, cfg, plan, col))
    except MilvusUnavailable as e:
        col.save()
        if writer is not None:
            writer.flush()
        kept = (f"{len(col.scanned) + len(col.reused) + len(col.errored)} finished image(s) are checkpointed: run "
                f"again with run id {run_id!r} to resume" if ckpt is not None else
                "checkpoints are off (checkpoint_every=0)")
        raise ScanError(f"{e}. Nothing was published; {kept}.") from e
    if col.pending:
        raise ScanError(f"{len(col.pending)} image(s) came back incomplete (fewer region rows than detected): "
                        "refusing to publish")
    col.save()
    if writer is not None:
        writer.flush()
        sp.info["written"] = writer.images_written

    now = datetime.now(timezone.utc)
    col.errors += manifest_errors(unidentified, "MissingItemId",
                                  "item_id is null or empty: a reviewer could not act on this row; not scanned")
    col.errors += manifest_errors(dups, "DuplicateRow", "repeats an earlier (item_id, image_id); scanned once")
    common = {"run_id": run_id, "scanned_at": now, "model_version": plan.model_version,
              "gallery_version": plan.gallery_version}
    flagged_tables, by_queue = publish.queues(col.flagged, common, manifest, cfg.carry_columns)
    errors = publish.table(col.errors, ERRORS, {"run_id": run_id, "scanned_at": now})

    refused = sum(1 for e in col.errors if e["error_type"] == "PermissionError")
    if refused:
        log.warning("scan.refused", rows=refused, allowed_roots=list(cfg.fetch.allowed_roots),
                    note="image URIs outside the allowed roots were not read (set fetch.allowed_roots)")
    rows_scanned = len(col.scanned)
    summary = publish.summary(
        plan, cfg, t0, rows_in=manifest.num_rows, scanned=rows_scanned, reused=len(col.reused),
        errored=len(col.errored) + dups.num_rows + unidentified.num_rows, regions=col.regions,
        flagged=len(col.flagged), by_queue={q: len(v) for q, v in by_queue.items()}, errors_by_stage=publish.errors_by_stage(col.errors),
        stage_seconds=stage_s, store=sp.info if sp else None, rows_resumed=col.resumed,
        images_per_s=round(manifest.num_rows / max(time.time() - t0, 1e-9), 2),
        stage_worker_seconds={k: round(v, 3) for k, v in sorted(col.stage_seconds.items())})
    summary["outputs"] = output.write_run(cfg.out, run_id, plan.run_date, flagged_tables, errors, summary,
                                          config_io.to_dict(cfg))
    if sp is not None and cfg.store.write:
        # what reviewers were shown against this gallery: `rematch` shows only what is new
        sp.store.write_flags(match_version(plan.gallery_version, plan.thresholds, cfg.ocr), run_id,
                             publish.ledger_rows(col.flagged, sp.content))
    if ckpt is not None:
        ckpt.clear()  # published: nothing left to resume
    metrics.flagged(summary["flagged_by_queue"])
    busy = sum(col.stage_seconds.values())
    for stage, secs in sorted(col.stage_seconds.items(), key=lambda x: -x[1]):
        # one canonical line per stage: its share of the workers' time
        log.info("scan.stage", stage=stage, worker_seconds=round(secs, 2), share=round(secs / max(busy, 1e-9), 3),
                 images=rows_scanned, images_per_worker_s=round(rows_scanned / max(secs, 1e-9), 2))
    log.info("scan.done", **{k: summary[k] for k in ("rows_in", "rows_scanned", "rows_reused", "rows_errored",
                                                     "rows_resumed", "regions", "flagged", "seconds",
                                                     "images_per_s", "flagged_by_queue", "errors_by_stage")},
             gallery_version=plan.gallery_version, engine=cfg.engine)
    return summary


def run_rematch(cfg: RematchConfig) -> dict:
    """Match every stored embedding against the gallery as it is now and write review queues as a
    scan would, holding only the flags reviewers have not been shown: not flagged against the
    previous gallery version (or thresholds), nor by an earlier run against this one. No image is
    read and no model runs."""
    _required(cfg, ("store", "milvus_uri", "out"), "rematch")
    started, run_id, run_date = run_ids(cfg, "rematch")
    configure(run_id)
    with RunLock(cfg.out, run_id):
        with _served(cfg) as uri:
            if cfg.engine == "ray" and cfg.ray.matcher_actors > 0:
                return _rematch_streaming(cfg, started, run_id, run_date, uri)
            return _rematch(cfg, started, run_id, run_date, uri)


def _rematch_streaming(cfg: RematchConfig, started: datetime, run_id: str, run_date: str, uri: str) -> dict:
    """``rematch`` on Ray without the driver holding the store's index or the flags: the index,
    the ledger of what reviewers were shown and the optional manifest meet in Ray Data
    (logoscan.sweep.stream.build_rematch); the pool matches and writes parts; the driver publishes."""
    from logoscan.checkpoint import Checkpoint
    t0 = time.time()
    plan, pinned = make_plan(cfg, uri, run_id, run_date, started)
    store = open_store(cfg.store, plan.model_version, cfg.detector, cfg.ocr)
    if not store.region_files():
        raise ScanError(f"the store {redact(cfg.store)} holds no entries for {store.key} (models and region "
                        f"settings); it holds {store.other_keys() or 'nothing'}: rematch with the scan's "
                        "detector/embedder/OCR settings, or scan first")
    files = stream.manifest_files(cfg.manifest, ())[0] if cfg.manifest else []
    version = match_version(plan.gallery_version, plan.thresholds, cfg.ocr)
    previous = cfg.previous or store.previous_match(version)
    shown = [] if cfg.all_flags else (store.flag_files(previous) if previous else []) + store.flag_files(
        version, before_run=run_id)
    log.info("rematch.start", store=redact(cfg.store), key=store.key, match_version=version, previous=previous,
             collection=pinned.collection, engine=cfg.engine, streaming=True)
    if previous is None and not cfg.all_flags:
        log.warning("rematch.no_previous", match_version=version,
                    note="no match against another gallery version or thresholds is recorded: every flag not "
                         "yet shown against this one is new")
    ckpt = Checkpoint(cfg.out, run_id, "rematch")
    ckpt.clear()  # a rematch is not resumed: it reads no image, and is redone whole
    parts_dir = storage.join(ckpt.dir, "rows")
    t_run = time.time()
    stream.run(stream.build_rematch(store, shown, files, parts_dir, pinned, engines.match_kwargs(pinned, plan)),
               0, 0, run_id)
    seconds = round(time.time() - t_run, 3)
    common = {"run_id": run_id, "scanned_at": datetime.now(timezone.utc), "model_version": plan.model_version,
              "gallery_version": plan.gallery_version}
    ledger = storage.join(ckpt.dir, "ledger.parquet")
    output.begin_staging(cfg.out, run_id)
    got = stream.publish_parts(stream.parts(parts_dir), cfg.out, run_id, run_date, common, pa.schema([]),
                               ledger=ledger)
    summary = publish.summary(
        plan, pinned, t0, rows_in=got.reused, scanned=0, reused=got.reused, errored=got.errored,
        regions=got.regions, flagged=got.flagged, by_queue=dict(got.by_queue), errors_by_stage=dict(got.errors_by_stage),
        stage_seconds={"stored_match": seconds},
        store={"uri": redact(cfg.store), "key": store.key, "match_version": version, "previous": previous},
        flagged_all=got.flagged_all, regions_per_s=round(got.regions / max(seconds, 1e-9), 1), streaming=True)
    summary["outputs"] = output.publish_staged(cfg.out, run_id, run_date, got.queues, summary,
                                               config_io.to_dict(pinned))
    if got.flagged_all:
        store.add_flags(version, run_id, ledger)
    else:
        store.write_flags(version, run_id, [])  # an empty part still records this match (previous_match)
    ckpt.clear()
    log.info("rematch.done", **{k: summary[k] for k in ("rows_in", "regions", "regions_per_s", "flagged",
                                                        "flagged_all", "seconds")})
    return summary


def _rematch(cfg: RematchConfig, started: datetime, run_id: str, run_date: str, uri: str) -> dict:
    t0 = time.time()
    plan, pinned = make_plan(cfg, uri, run_id, run_date, started)
    store = open_store(cfg.store, plan.model_version, cfg.detector, cfg.ocr)
    index = store.index()
    if not index:
        raise ScanError(f"the store {redact(cfg.store)} holds no entries for {store.key} (models and region "
                        f"settings); it holds {store.other_keys() or 'nothing'}: rematch with the scan's "
                        "detector/embedder/OCR settings, or scan first")
    if cfg.manifest:
        keep = set(zip(*(read_manifest(cfg.manifest).column(k).to_pylist() for k in ("item_id", "image_id"))))
        index = {k: v for k, v in index.items() if k in keep}
    version = match_version(plan.gallery_version, plan.thresholds, cfg.ocr)
    previous = cfg.previous or store.previous_match(version)
    log.info("rematch.start", store=redact(cfg.store), key=store.key, images=len(index), match_version=version,
             previous=previous, collection=pinned.collection, engine=cfg.engine)
    col = Collector(len(index))
    seconds = engines.run_stored(store, {k: part for k, (_, part) in index.items()}, pinned, plan, col)
    content = {k: ck for k, (ck, _) in index.items()}
    shown = set() if cfg.all_flags else (store.read_flags(previous) if previous else set()) | store.read_flags(
        version, before_run=run_id)
    if previous is None and not cfg.all_flags:
        log.warning("rematch.no_previous", match_version=version,
                    note="no match against another gallery version or thresholds is recorded: every flag not "
                         "yet shown against this one is new")
    new = [r for r in col.flagged if (r["item_id"], r["image_id"], content[(r["item_id"], r["image_id"])],
                                      int(r["region"]), r["label"]) not in shown]
    common = {"run_id": run_id, "scanned_at": datetime.now(timezone.utc), "model_version": plan.model_version,
              "gallery_version": plan.gallery_version}
    tables, by_queue = publish.queues(new, common, None, ())
    summary = publish.summary(
        plan, pinned, t0, rows_in=len(index), scanned=0, reused=len(col.reused), errored=0, regions=col.regions,
        flagged=len(new), by_queue={q: len(v) for q, v in by_queue.items()}, errors_by_stage={}, stage_seconds={"stored_match": seconds},
        store={"uri": redact(cfg.store), "key": store.key, "match_version": version, "previous": previous},
        flagged_all=len(col.flagged), regions_per_s=round(col.regions / max(seconds, 1e-9), 1))
    summary["outputs"] = output.write_run(cfg.out, run_id, run_date, tables, publish.table([], ERRORS, {}), summary,
                                          config_io.to_dict(pinned))
    store.write_flags(version, run_id, publish.ledger_rows(col.flagged, content))
    log.info("rematch.done", **{k: summary[k] for k in ("rows_in", "regions", "regions_per_s", "flagged",
                                                        "flagged_all", "seconds")})
    return summary

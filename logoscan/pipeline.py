"""The sweep: manifest → fetch → detect → embed → match → decide → review queues.

Two engines run the same stage functions: ``ray`` (Ray Data actor pools; local Ray by default,
a cluster via ``ray.address`` / RAY_ADDRESS) and ``local`` (in-process, for tests and debugging).
Images the embedding store already holds (``store.incremental``) skip the engines: their stored
embeddings go straight to match + decide in the driver; ``run_rematch`` does only that, for the
whole store, against a changed gallery (logoscan.store, docs/incremental.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logoscan import config_io, metrics, output, stages, storage
from logoscan.calibration import read_calibration, resolve_thresholds
from logoscan.checkpoint import Checkpoint, fingerprint
from logoscan.config import RematchConfig, ScanConfig
from logoscan.gallery import GalleryError, MilvusUnavailable, connect, read_metadata, redact
from logoscan.lite_server import serving
from logoscan.log import configure, get_logger
from logoscan.models import default_artifact_path
from logoscan.runlock import RunLock
from logoscan.schema import ERRORS, FLAGGED, SchemaError, parquet_files, validate_manifest
from logoscan.store import Store, content_keys, store_key

log = get_logger(__name__)


class ScanError(RuntimeError):
    pass


# ------------------------------------------------------------------ inputs

def read_manifest(uri: str, extra_columns: tuple = ()) -> pa.Table:
    """A Parquet file, a folder of them, or an s3:// prefix; validated per file before any work."""
    tables = []
    stray = storage.other_files(uri, ".parquet")
    if stray:
        raise SchemaError(f"the manifest folder {uri} holds {len(stray)} file(s) that are not .parquet "
                          f"(e.g. {stray[:3]}): their rows would be scanned nowhere. Convert them to Parquet or "
                          "move them out (names starting with '_' or '.' are skipped)")
    for f in parquet_files(uri, "manifest"):
        fs, path = storage.resolve(f)
        try:
            names = pq.read_schema(fs.open_input_file(path)).names
            wanted = ["item_id", "image_uri", "image_id", "image_fingerprint", *extra_columns]
            t = pq.read_table(path, filesystem=fs, columns=[c for c in wanted if c in names])
        except Exception as e:
            raise SchemaError(f"{f}: not a readable Parquet file ({e})") from e
        t = validate_manifest(t, f)
        missing = [c for c in extra_columns if c not in t.column_names]
        if missing:
            raise SchemaError(f"{f}: carry_columns {missing} are not in the manifest")
        if "image_fingerprint" not in t.column_names:
            t = t.append_column("image_fingerprint", pa.nulls(t.num_rows, pa.string()))
        tables.append(t.select(["item_id", "image_id", "image_uri", "image_fingerprint",
                                *[c for c in extra_columns if c != "image_fingerprint"]]))
    return pa.concat_tables(tables, promote_options="default")


def split_unidentified(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows without an item_id (null, empty or blank) cannot be acted on by a reviewer: they are
    not scanned, each becomes an error row (stage manifest)."""
    ids = table.column("item_id")
    ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), False)
    return table.filter(ok), table.filter(pc.invert(ok))


def split_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows repeating an earlier (item_id, image_id) are not scanned twice: they become error rows."""
    seen, keep = set(), []
    for i, key in enumerate(zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist())):
        keep.append(key not in seen)
        seen.add(key)
    mask = pa.array(keep, pa.bool_())
    return table.filter(mask), table.filter(pc.invert(mask))


def artifact_config(kind: str, uri: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(uri or default_artifact_path(kind), "config.json")))


# ------------------------------------------------------------------ collecting results

FLAG_KEYS = ("item_id", "image_id", "image_uri", "region", "box", "det_score", "label", "category", "logo_id",
             "distance", "threshold", "threshold_source", "runner_up_label", "runner_up_distance", "margin",
             "queue", "thumbnail_jpeg")


class Collector:
    """Consumes output batches. An image is finished when all of its rows (one per region, or
    one "empty"/"error" row) have come back; only then does it count as scanned, reused (matched
    from the embedding store) or errored, is it handed to the store writer, and every
    ``checkpoint_every`` finished images go to the run's checkpoint."""

    def __init__(self, total: int, checkpoint=None, every: int = 0, resumed: list[dict] = (), writer=None):
        self.total, self.errors, self.flagged = total, [], []
        self.scanned, self.reused, self.errored = set(), set(), set()
        self.regions = 0
        self.pending: dict[tuple, dict] = {}
        self.unsaved: list[dict] = []
        self.checkpoint, self.every, self.writer = checkpoint, every, writer
        for img in resumed:
            self._count(img)
        self.resumed = len(resumed)
        self.t0 = self.last = time.time()
        self.stage_seconds: Counter = Counter()  # worker-seconds per stage, from the rows' _s_ columns
        self.run_id = ""
        self.bar = _Bar(total) if sys.stderr.isatty() else None

    def add(self, b: dict, status: str = "scanned") -> None:
        kind = np.asarray(b["kind"])
        for k, v in b.items():
            if k.startswith(metrics.PREFIX):
                self.stage_seconds[k[len(metrics.PREFIX):]] += float(np.sum(v))
        for i in range(len(kind)):
            key = (b["item_id"][i], b["image_id"][i])
            img = self.pending.setdefault(key, {"key": key, "image_uri": b["image_uri"][i], "left": int(
                b["rows_of_image"][i]), "status": status, "regions": 0, "error": None, "flagged": []})
            img["left"] -= 1
            if kind[i] == "error":
                img["status"] = "errored"
                img["error"] = {"stage": b["error_stage"][i], "error_type": b["error_type"][i],
                                "message": b["error_message"][i]}
            elif kind[i] == "region":
                img["regions"] += 1
                if b["flagged"][i]:
                    img["flagged"].append({k: (b[k][i].tolist() if k == "box" else b[k][i]) for k in FLAG_KEYS} |
                                          {"ocr_text": (b["ocr_text"][i] or None) if "ocr_text" in b else None})
            if img["left"] <= 0:
                self._count(self.pending.pop(key))
                self.unsaved.append(img)
                if self.writer is not None:
                    self.writer.finish(key, img["status"])
        if self.checkpoint is not None and self.every and len(self.unsaved) >= self.every:
            self.save()
        self._progress()

    def _count(self, img: dict) -> None:
        item_id, image_id = img["key"]
        metrics.images(img["status"])
        if img["status"] == "errored":
            self.errored.add(img["key"])
            self.errors.append({"item_id": item_id, "image_id": image_id, "image_uri": img["image_uri"],
                                **img["error"]})
        else:
            (self.reused if img["status"] == "reused" else self.scanned).add(img["key"])
            self.regions += img["regions"]
            self.flagged.extend(img["flagged"])

    def capture(self, b: dict) -> None:
        """An embedded batch, before matching drops its embeddings: for the store writer."""
        if self.writer is not None:
            self.writer.capture(b)

    def save(self) -> None:
        """Checkpoint the images finished since the last save."""
        if self.checkpoint is not None and self.unsaved:
            if self.writer is not None:
                self.writer.flush()  # stored before checkpointed: a resumed run's images are in the store
            self.checkpoint.write(self.unsaved)
            self.unsaved = []

    def _progress(self) -> None:
        """A progress bar on a terminal; otherwise a log line every ``PROGRESS_EVERY_S``."""
        now = time.time()
        done = len(self.scanned) + len(self.reused) + len(self.errored)
        rate = (done - self.resumed) / max(now - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.show(done, rate, len(self.flagged), len(self.errors))
        if now - self.last >= (PROGRESS_EVERY_S if self.bar is None else 60) or done == self.total:
            self.last = now
            metrics.progress(self.run_id, done / max(self.total, 1), rate)
            log.info("scan.progress", done=done, total=self.total, pct=round(100 * done / max(self.total, 1), 1),
                     img_per_s=round(rate, 2), eta_s=round((self.total - done) / rate, 1) if rate else None,
                     flagged=len(self.flagged), errors=len(self.errors))


PROGRESS_EVERY_S = 10


class _Bar:
    """One self-rewriting line on a terminal (stderr), no dependency."""

    def __init__(self, total: int):
        self.total, self.last = total, 0.0

    def show(self, done: int, rate: float, flagged: int, errors: int) -> None:
        now = time.time()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        width = 30
        fill = int(width * done / max(self.total, 1))
        eta = f"{(self.total - done) / rate:,.0f} s" if rate > 0 else "?"
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done:,}/{self.total:,} images "
                         f"{rate:,.1f}/s  eta {eta}  flagged {flagged:,}  errors {errors:,} ")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------ engines

def _run_local(manifest: pa.Table, cfg: ScanConfig, ctx: dict, col: Collector) -> dict:
    import torch

    from logoscan.actors import DetectActor, EmbedActor, MatchActor, OcrActor, fetch
    det = DetectActor(cfg.detector, ctx["crop_size"], ctx["crop_pad"], cfg.fetch.max_pixels, ctx["run_id"])
    ocr = OcrActor(cfg.ocr, ctx["run_id"]) if cfg.ocr.enabled else None
    emb = EmbedActor(cfg.embedder, ctx["run_id"])
    # after the actors: each sets the (process-wide) thread count for itself, and the embedder's
    # single thread left the detector on one core (half the in-process engine's throughput)
    torch.set_num_threads(max(cfg.detector.threads, cfg.embedder.threads))
    mat = MatchActor(ctx["milvus_uri"], cfg.collection, cfg.match, cfg.policy, ctx["thresholds"],
                     ctx["embedder_version"], ctx["run_id"], cfg.ocr)
    timings = Counter()
    try:
        n = cfg.ray.fetch_batch
        for s in range(0, manifest.num_rows, n):
            part = manifest.slice(s, n)
            b = {k: np.asarray(part.column(k).to_pylist(), dtype=object) for k in stages.KEYS}
            b, t = stages.timed(fetch, b, cfg.fetch); timings["fetch"] += t
            b, t = stages.timed(det, b); timings["detect"] += t
            if ocr is not None:
                b, t = stages.timed(ocr, b); timings["ocr"] += t
            b, t = stages.timed(emb, b); timings["embed"] += t
            col.capture(b)
            b, t = stages.timed(mat, b); timings["match"] += t
            col.add(b)
    finally:
        mat.matcher.close()
    return {k: round(v, 3) for k, v in timings.items()}


def init_ray(rcfg) -> None:
    import ray

    if ray.is_initialized():
        return
    address = rcfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(num_cpus=rcfg.num_cpus, include_dashboard=False, logging_level="WARNING")


FREE_FOR_RAY_DATA = 0.75  # measured on 2 CPUs: 0.75 free ran, 0.5 and 0.25 free stalled


def actor_cpus(r, n_actors: int, cluster_cpus: float, matchers: int = 0) -> float:
    """CPUs each model actor reserves. Ray Data's own tasks (reading and splitting the manifest)
    need CPU left over: with detector + OCR + embedder actors at 0.5 each on 2 CPUs the sweep
    stalled with every actor idle and no error. So the reservation is lowered to leave
    ``FREE_FOR_RAY_DATA`` besides the fetch tasks' 0.25 and the matcher actors' own reservation,
    and a warning says so."""
    free = cluster_cpus - 0.25 - FREE_FOR_RAY_DATA - matchers * r.matcher_cpus  # the fetch tasks hold 0.25
    if n_actors * r.cpus_per_actor <= free or n_actors == 0:
        return r.cpus_per_actor
    cpa = max(round(free / n_actors, 3), 0.05)
    log.warning("ray.actor_cpus_lowered", configured=r.cpus_per_actor, used=cpa, actors=n_actors,
                cluster_cpus=cluster_cpus,
                note="the actors would leave too little CPU for Ray Data's own tasks (the sweep would stall)")
    return cpa


def _run_ray(manifest: pa.Table, cfg: ScanConfig, ctx: dict, col: Collector) -> dict:
    import ray

    from logoscan.actors import DetectActor, DetectEmbedActor, EmbedActor, MatchActor, OcrActor, fetch
    dctx = ray.data.DataContext.get_current()
    dctx.enable_progress_bars = False  # our own scan.progress log lines instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    r = cfg.ray
    gpus = r.num_gpus_per_actor
    # embedder_actors 0: embed inside the detector actors, except with OCR on, which reads the crops
    # between detect and embed (then a pool of one)
    fused = r.embedder_actors == 0 and not cfg.ocr.enabled
    n_emb = 0 if fused else max(1, r.embedder_actors)
    cpa = actor_cpus(r, r.detector_actors + n_emb + (cfg.ocr.actors if cfg.ocr.enabled else 0),
                     ray.cluster_resources().get("CPU", 0.0), r.matcher_actors)
    n_blocks = max(1, math.ceil(manifest.num_rows / r.fetch_batch))
    ds = ray.data.from_arrow(manifest.select(list(stages.KEYS))).repartition(n_blocks)
    ds = ds.map_batches(fetch, fn_kwargs={"cfg": cfg.fetch}, batch_size=r.fetch_batch,
                        batch_format="numpy", num_cpus=0.25)
    det_kw = dict(det_cfg=cfg.detector, crop_size=ctx["crop_size"], crop_pad=ctx["crop_pad"],
                  max_pixels=cfg.fetch.max_pixels, run_id=ctx["run_id"])
    ds = ds.map_batches(DetectEmbedActor if fused else DetectActor,
                        fn_constructor_kwargs=dict(det_kw, emb_cfg=cfg.embedder) if fused else det_kw,
                        batch_size=r.fetch_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=r.detector_actors),
                        num_cpus=cpa, num_gpus=gpus)
    if cfg.ocr.enabled:
        ds = ds.map_batches(OcrActor, fn_constructor_kwargs=dict(ocr_cfg=cfg.ocr, run_id=ctx["run_id"]),
                            batch_size=r.fetch_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=cfg.ocr.actors),
                            num_cpus=cpa, num_gpus=gpus)
    if not fused:
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=dict(emb_cfg=cfg.embedder, run_id=ctx["run_id"]),
                            batch_size=cfg.embedder.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_emb),
                            num_cpus=cpa, num_gpus=gpus)
    if not r.matcher_actors:  # the driver matches, with one client (ray.matcher_actors: 0)
        owner = _match_actor(cfg, ctx)
        try:
            for b in ds.iter_batches(batch_format="numpy", batch_size=cfg.match.search_batch):
                col.capture(b)
                col.add(owner(b))
        finally:
            owner.matcher.close()
        return {}
    ds = ds.map_batches(MatchActor, fn_constructor_kwargs=_match_kwargs(cfg, ctx, keep_embedding=col.writer is not None),
                        batch_size=cfg.match.search_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=r.matcher_actors), num_cpus=r.matcher_cpus)
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        col.capture(b)
        b.pop("embedding", None)
        col.add(b)
    return {}


def _match_kwargs(cfg, ctx: dict, keep_embedding: bool = False) -> dict:
    return dict(milvus_uri=ctx["milvus_uri"], collection=cfg.collection, match_cfg=cfg.match, policy=cfg.policy,
                thresholds=ctx["thresholds"], embedder_version=ctx["embedder_version"], run_id=ctx["run_id"],
                ocr_cfg=cfg.ocr, keep_embedding=keep_embedding)


def _match_actor(cfg, ctx: dict):
    from logoscan.actors import MatchActor
    return MatchActor(**_match_kwargs(cfg, ctx))


# ------------------------------------------------------------------ the run

def _table(rows: list[dict], schema: pa.Schema, fill: dict) -> pa.Table:
    cols = {f.name: [r.get(f.name, fill.get(f.name)) for r in rows] for f in schema}
    for name in ("runner_up_label", "ocr_text"):
        if name in cols:
            cols[name] = [v or None for v in cols[name]]
    for name in ("runner_up_distance", "margin"):  # no runner-up: null, not NaN
        if name in cols:
            cols[name] = [None if v is None or v != v else v for v in cols[name]]
    return pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()}, schema=schema)


def _run_ids(cfg, prefix: str) -> tuple[datetime, str, str]:
    started = datetime.now(timezone.utc)
    run_id = cfg.run_id or f"{prefix}-" + started.strftime("%Y%m%dT%H%M%SZ")
    run_date = str(cfg.run_date) if cfg.run_date else started.strftime("%Y-%m-%d")  # YAML reads dates as dates
    try:
        datetime.strptime(run_date, "%Y-%m-%d")
    except ValueError:
        raise ScanError(f"run_date must look like YYYY-MM-DD, not {cfg.run_date!r}") from None
    return started, run_id, run_date


def _gallery(cfg, emb_cfg: dict, uri: str) -> tuple[dict, dict | None, object, str]:
    """The gallery's metadata and calibration (from Milvus at ``uri``: the run's own URI, an
    embedded .db being served), and the thresholds this run applies."""
    client = connect(uri)
    try:
        gmeta = read_metadata(client, cfg.collection)  # an alias: pinned to its version for this run
        calibration = read_calibration(client, gmeta["collection"], gmeta)
    finally:
        client.close()
    if gmeta["embedder_version"] != emb_cfg["version"]:
        raise GalleryError(f"gallery {cfg.collection!r} holds {gmeta['embedder_version']} embeddings, "
                           f"the sweep's embedder is {emb_cfg['version']}: rebuild the gallery")
    # default: policy > the gallery's own (measured at build for this gallery) > the embedder's
    threshold = next((t for t in (cfg.policy.default_threshold, gmeta.get("default_threshold"),
                                  emb_cfg.get("default_threshold")) if t is not None), None)
    if threshold is None:
        raise ScanError("no match threshold: set policy.default_threshold or per-category thresholds")
    queues = {c: cfg.policy.for_category(c).queue or c for c in gmeta.get("categories") or []}
    clash = output.queue_collisions(set(queues.values()))
    if clash:
        raise ScanError(f"review queues {clash} (from categories {sorted(queues)} and policy.categories) would be "
                        "written to the same file (queue=<name> keeps letters, digits, '.', '-', '_'): give them "
                        "distinct queue names in policy.categories.<category>.queue")
    mode = "ocr" if cfg.ocr.enabled else "image"
    thresholds = resolve_thresholds(cfg.policy, threshold, calibration, mode)
    _check_calibration(cfg, calibration, mode, thresholds)
    return gmeta, calibration, thresholds, mode


def _pin_gallery(cfg, gmeta: dict):
    """Match against the collection the alias named at the start, whatever is built meanwhile."""
    if gmeta["collection"] != cfg.collection:
        log.info("gallery.pinned", alias=cfg.collection, collection=gmeta["collection"],
                 gallery_version=gmeta["gallery_version"])
        cfg = dataclasses.replace(cfg, collection=gmeta["collection"])
    return cfg


def match_version(gallery_version: str, thresholds, ocr) -> str:
    """What decides a flag besides the embedding: the gallery, the thresholds, OCR fusion."""
    fused = [ocr.weight, ocr.floor] if ocr.enabled else None
    return f"{gallery_version}.{fingerprint({'thresholds': dataclasses.asdict(thresholds), 'ocr': fused})[:8]}"


def open_store(uri: str, model_version: str, det, ocr) -> Store:
    """The store folder for these models and the settings that change what is stored."""
    settings = {"score_thresh": det.score_thresh, "max_regions": det.max_regions, "thumbnail_px": det.thumbnail_px,
                **({"precision": det.precision} if det.precision != "fp32" else {}),  # fp32: the keys stores had
                **({"input_size": det.input_size} if det.input_size else {}),
                "ocr": {"languages": list(ocr.languages), "model_dir": ocr.model_dir,
                        "min_confidence": ocr.min_confidence} if ocr.enabled else None}
    return Store(uri, store_key(model_version, settings), {"model_version": model_version, "settings": settings})


def _plan(cfg: ScanConfig, run_id: str, unique: pa.Table, todo: pa.Table, model_version: str):
    """With the store on: every row's content key, the writer for newly scanned images and, for
    an incremental run, the rows the store already holds for this content and these models."""
    store = open_store(cfg.store.uri or storage.join(cfg.out, "store"), model_version, cfg.detector, cfg.ocr)
    t0 = time.time()
    roots = cfg.fetch.allowed_roots
    allowed = unique.filter(pa.array([_allowed(u, roots) for u in unique.column("image_uri").to_pylist()],
                                     pa.bool_()))
    ck = dict(zip(zip(allowed.column("item_id").to_pylist(), allowed.column("image_id").to_pylist()),
                  content_keys(allowed, cfg.store.stat_threads)))
    writer = store.writer(run_id, cfg.checkpoint_every or 256) if cfg.store.write else None
    if writer is not None:
        writer.content = ck
    reuse, info = {}, {"uri": redact(store.uri), "key": store.key, "incremental": cfg.store.incremental,
                       "other_keys": store.other_keys()}
    if cfg.store.incremental:
        index = store.index()
        new = changed = unknown = 0
        for key in zip(todo.column("item_id").to_pylist(), todo.column("image_id").to_pylist()):
            have, now = index.get(key), ck.get(key)
            if now is None:
                unknown += 1
            elif have is None:
                new += 1
            elif have[0] != now:
                changed += 1
            else:
                reuse[key] = have[1]
        info.update(stored_images=len(index), new=new, changed=changed, unknown=unknown, reused=len(reuse))
        if info["other_keys"] and not index:
            log.warning("store.model_changed", store=info["uri"], key=store.key, not_used=info["other_keys"],
                        note="the store holds entries of other models or settings only: every image is "
                             "fetched, detected and embedded again under the current ones")
        log.info("store.plan", **{k: info[k] for k in ("key", "stored_images", "reused", "new", "changed", "unknown")},
                 stat_s=round(time.time() - t0, 2))
    return store, writer, reuse, ck, info


def _allowed(uri, roots) -> bool:
    try:
        storage.check_uri(str(uri))
        stages.check_allowed(str(uri), roots)
        return bool(uri)
    except Exception:  # noqa: BLE001 - the fetch stage gives it its error row
        return False


def _run_stored(store: Store, wanted: dict, cfg, ctx: dict, col: Collector, engine: str, r) -> float:
    """Match images from the embedding store: no fetch, decode, detect or embed. ``ray`` with
    matcher actors: Ray Data tasks read the store's parts (one part a task: an image's rows are in
    one part, so they stay together without a shuffle) and the matcher actor pool searches; else
    the driver reads and matches with one client."""
    if not wanted:
        return 0.0
    t0 = time.perf_counter()  # the matching loop (store reads, searches, decisions)
    if engine == "ray" and r.matcher_actors:
        import ray

        from logoscan.actors import MatchActor
        by_file: dict[str, list] = {}
        for key, f in wanted.items():
            by_file.setdefault(f, []).append(key)
        ds = ray.data.from_items([{"part": f, "keys": keys} for f, keys in sorted(by_file.items())],
                                 override_num_blocks=len(by_file))
        ds = ds.map_batches(_read_parts, fn_kwargs={"store": store, "batch_rows": cfg.match.search_batch},
                            batch_size=1, batch_format="pyarrow", num_cpus=0.25)
        ds = ds.map_batches(MatchActor, fn_constructor_kwargs=_match_kwargs(cfg, ctx),
                            batch_size=cfg.match.search_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=r.matcher_actors), num_cpus=r.matcher_cpus)
        for b in ds.iter_batches(batch_format="numpy", batch_size=None):
            col.add(b, status="reused")
        return round(time.perf_counter() - t0, 3)
    owner = _match_actor(cfg, ctx)
    try:
        for b in store.entries(wanted, cfg.match.search_batch):
            col.add(owner(b), status="reused")
    finally:
        owner.matcher.close()
    return round(time.perf_counter() - t0, 3)


def _read_parts(items: pa.Table, store: Store, batch_rows: int):
    """A Ray Data task: the stored regions of the wanted images of one store part, as batches."""
    for part, keys in zip(items.column("part").to_pylist(), items.column("keys").to_pylist()):
        for b in store.entries({tuple(k): part for k in keys}, batch_rows):
            yield b


def run_scan(cfg: ScanConfig) -> dict:
    for name in ("manifest", "milvus_uri", "out"):
        if not getattr(cfg, name):
            raise ScanError(f"scan needs {name} (flag --{name.replace('_', '-')} or config key {name!r})")
    clash = sorted(set(cfg.carry_columns) & set(FLAGGED.names))
    if clash:  # the flagged rows would hold two columns of one name (readers refuse such a file)
        raise ScanError(f"carry_columns {clash} are columns of the flagged rows already; carry other columns")
    if _inside(cfg.out, cfg.manifest):
        raise ScanError(f"--out {cfg.out} is inside the manifest folder {cfg.manifest}: the next run would read its "
                        "queues, errors and store as manifests. Write the outputs elsewhere")
    started, run_id, run_date = _run_ids(cfg, "scan")
    configure(run_id)
    t0 = time.time()
    manifest = read_manifest(cfg.manifest, tuple(cfg.carry_columns))  # errors here: before any work
    with RunLock(cfg.out, run_id):  # one run id on one --out at a time
        if cfg.engine == "ray":
            # before any Milvus client: gRPC threads in the driver break the Ray head's fork
            init_ray(cfg.ray)
        with serving(cfg.milvus_uri, enabled=cfg.engine == "ray" and cfg.ray.matcher_actors > 0) as uri:
            return _scan(cfg, manifest, started, t0, run_id, run_date, uri)


def _scan(cfg: ScanConfig, manifest: pa.Table, started: datetime, t0: float, run_id: str, run_date: str,
          uri: str) -> dict:
    cfg = dataclasses.replace(cfg, fetch=dataclasses.replace(cfg.fetch, allowed_roots=allowed_roots(cfg)))
    identified, unidentified = split_unidentified(manifest)
    unique, dups = split_duplicates(identified)
    det_cfg = artifact_config("detector", cfg.detector.artifact)
    emb_cfg = artifact_config("embedder", cfg.embedder.artifact)
    gmeta, calibration, thresholds, mode = _gallery(cfg, emb_cfg, uri)
    cfg = _pin_gallery(cfg, gmeta)
    ctx = {"run_id": run_id, "crop_size": emb_cfg["input_size"], "crop_pad": emb_cfg["crop_pad"],
           "thresholds": thresholds, "embedder_version": emb_cfg["version"], "milvus_uri": uri}
    model_version = f"{det_cfg['version']}+{emb_cfg['version']}"
    ckpt, resumed = _resume(cfg, run_id, unique, model_version, gmeta["gallery_version"], thresholds)
    if resumed:
        run_date = str(cfg.run_date) if cfg.run_date else ckpt.meta.get("run_date", run_date)
    todo = _without(unique, {img["key"] for img in resumed})
    store = writer = None
    reuse, ckeys, store_info = {}, {}, None
    if cfg.store.write or cfg.store.incremental:
        store, writer, reuse, ckeys, store_info = _plan(cfg, run_id, unique, todo, model_version)
    to_scan = _without(todo, set(reuse))
    log.info("scan.start", manifest=cfg.manifest, rows=manifest.num_rows, duplicates=dups.num_rows,
             resumed=len(resumed), reused=len(reuse), to_scan=to_scan.num_rows,
             engine=cfg.engine, collection=cfg.collection, gallery_version=gmeta["gallery_version"],
             detector=det_cfg["version"], embedder=emb_cfg["version"], out=cfg.out)
    if ckpt is not None:
        ckpt.start(run_date)

    col = Collector(unique.num_rows, ckpt, cfg.checkpoint_every, resumed, writer)
    col.run_id = run_id
    stage_s = {}
    try:
        if reuse:
            stage_s["stored_match"] = _run_stored(store, reuse, cfg, ctx, col, cfg.engine, cfg.ray)
        if to_scan.num_rows:
            stage_s.update((_run_local if cfg.engine == "local" else _run_ray)(to_scan, cfg, ctx, col))
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
        store_info["written"] = writer.images_written

    now = datetime.now(timezone.utc)
    for row in unidentified.to_pylist():
        col.errors.append({**{k: row[k] for k in stages.KEYS}, "stage": "manifest", "error_type": "MissingItemId",
                           "message": "item_id is null or empty: a reviewer could not act on this row; not scanned"})
    for row in dups.to_pylist():
        col.errors.append({**{k: row[k] for k in stages.KEYS}, "stage": "manifest",
                           "error_type": "DuplicateRow",
                           "message": "repeats an earlier (item_id, image_id); scanned once"})
    common = {"run_id": run_id, "scanned_at": now, "model_version": model_version,
              "gallery_version": gmeta["gallery_version"]}
    flagged_tables, by_queue = _queues(col.flagged, common, manifest, cfg.carry_columns)
    errors = _table(col.errors, ERRORS, {"run_id": run_id, "scanned_at": now})

    refused = sum(1 for e in col.errors if e["error_type"] == "PermissionError")
    if refused:
        log.warning("scan.refused", rows=refused, allowed_roots=list(cfg.fetch.allowed_roots),
                    note="image URIs outside the allowed roots were not read (set fetch.allowed_roots)")
    rows_in = manifest.num_rows
    rows_scanned, rows_reused = len(col.scanned), len(col.reused)
    rows_errored = len(col.errored) + dups.num_rows + unidentified.num_rows
    summary = {
        "run_id": run_id, "run_date": run_date, "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "seconds": round(time.time() - t0, 2),
        "rows_in": rows_in, "rows_scanned": rows_scanned, "rows_reused": rows_reused, "rows_errored": rows_errored,
        "rows_resumed": col.resumed,
        "regions": col.regions, "flagged": len(col.flagged),
        "flagged_by_queue": {q: len(v) for q, v in sorted(by_queue.items())},
        "errors_by_stage": dict(Counter(e["stage"] for e in col.errors)),
        "images_per_s": round(rows_in / max(time.time() - t0, 1e-9), 2),
        "stage_seconds": stage_s,
        "stage_worker_seconds": {k: round(v, 3) for k, v in sorted(col.stage_seconds.items())},
        "store": store_info,
        "versions": _versions(det_cfg, emb_cfg, gmeta, thresholds, calibration, mode, cfg.ocr.enabled),
        "config": config_io.to_dict(cfg),
    }
    if rows_scanned + rows_reused + rows_errored != rows_in:
        raise ScanError(f"accounting broken: {rows_in} rows in, {rows_scanned} scanned, {rows_reused} reused, "
                        f"{rows_errored} errored — refusing to publish a run that lost rows")
    summary["outputs"] = output.write_run(cfg.out, run_id, run_date, flagged_tables, errors, summary,
                                          config_io.to_dict(cfg))
    if store is not None and cfg.store.write:
        # what reviewers were shown against this gallery: `rematch` shows only what is new
        store.write_flags(match_version(gmeta["gallery_version"], thresholds, cfg.ocr), run_id,
                          _flag_keys(col.flagged, ckeys))
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
             gallery_version=gmeta["gallery_version"], engine=cfg.engine)
    return summary


def _queues(flagged: list[dict], common: dict, manifest: pa.Table | None, carry) -> tuple[dict, dict]:
    flagged.sort(key=lambda r: (r["queue"], str(r["item_id"]), str(r["image_id"]), r["box"]))
    by_queue: dict[str, list] = {}
    for r in flagged:
        by_queue.setdefault(r["queue"], []).append(r)
    tables = {q: _carry(_table(rows, FLAGGED, common), manifest, carry) for q, rows in by_queue.items()}
    return tables, by_queue


def _flag_keys(flagged: list[dict], content: dict) -> list[dict]:
    return [{"item_id": r["item_id"], "image_id": r["image_id"],
             "content_key": content.get((r["item_id"], r["image_id"])), "region": int(r["region"]),
             "label": r["label"], "logo_id": r["logo_id"], "distance": float(r["distance"])} for r in flagged]


def _versions(det_cfg, emb_cfg, gmeta, thresholds, calibration, mode, ocr_enabled) -> dict:
    return {"detector": det_cfg["version"], "embedder": emb_cfg["version"],
            "gallery": gmeta["gallery_version"], "threshold_default": thresholds.default,
            "calibration": {"created_at": calibration["created_at"], "mode": mode,
                            "inherited_from": (calibration.get("inherited") or {}).get("from_gallery_version"),
                            "applied": bool(thresholds.by_category),
                            "categories": thresholds.by_category,
                            "classes": len(thresholds.by_class)} if calibration else None,
            "thresholds_pinned": thresholds.pinned, "ocr": ocr_enabled}


def run_rematch(cfg: RematchConfig) -> dict:
    """Match every stored embedding against the gallery as it is now and write review queues as a
    scan would, holding only the flags reviewers have not been shown: not flagged against the
    previous gallery version (or thresholds), nor by an earlier run against this one. No image is
    read and no model runs."""
    for name in ("store", "milvus_uri", "out"):
        if not getattr(cfg, name):
            raise ScanError(f"rematch needs {name} (flag --{name.replace('_', '-')} or config key {name!r})")
    started, run_id, run_date = _run_ids(cfg, "rematch")
    configure(run_id)
    with RunLock(cfg.out, run_id):
        if cfg.engine == "ray":
            init_ray(cfg.ray)  # before any Milvus client
        with serving(cfg.milvus_uri, enabled=cfg.engine == "ray" and cfg.ray.matcher_actors > 0) as uri:
            return _rematch(cfg, started, run_id, run_date, uri)


def _rematch(cfg: RematchConfig, started: datetime, run_id: str, run_date: str, uri: str) -> dict:
    t0 = time.time()
    det_cfg = artifact_config("detector", cfg.detector.artifact)
    emb_cfg = artifact_config("embedder", cfg.embedder.artifact)
    model_version = f"{det_cfg['version']}+{emb_cfg['version']}"
    store = open_store(cfg.store, model_version, cfg.detector, cfg.ocr)
    index = store.index()
    if not index:
        raise ScanError(f"the store {redact(cfg.store)} holds no entries for {store.key} (models and region "
                        f"settings); it holds {store.other_keys() or 'nothing'}: rematch with the scan's "
                        "detector/embedder/OCR settings, or scan first")
    if cfg.manifest:
        keep = set(zip(*(read_manifest(cfg.manifest).column(k).to_pylist() for k in ("item_id", "image_id"))))
        index = {k: v for k, v in index.items() if k in keep}
    gmeta, calibration, thresholds, mode = _gallery(cfg, emb_cfg, uri)
    cfg = _pin_gallery(cfg, gmeta)
    version = match_version(gmeta["gallery_version"], thresholds, cfg.ocr)
    previous = cfg.previous or store.previous_match(version)
    ctx = {"run_id": run_id, "thresholds": thresholds, "embedder_version": emb_cfg["version"], "milvus_uri": uri}
    log.info("rematch.start", store=redact(cfg.store), key=store.key, images=len(index), match_version=version,
             previous=previous, collection=cfg.collection)
    col = Collector(len(index))
    seconds = _run_stored(store, {k: part for k, (_, part) in index.items()}, cfg, ctx, col, cfg.engine, cfg.ray)
    content = {k: ck for k, (ck, _) in index.items()}
    shown = set() if cfg.all_flags else (store.read_flags(previous) if previous else set()) | store.read_flags(
        version, before_run=run_id)
    if previous is None and not cfg.all_flags:
        log.warning("rematch.no_previous", match_version=version,
                    note="no match against another gallery version or thresholds is recorded: every flag not "
                         "yet shown against this one is new")
    new = [r for r in col.flagged if (r["item_id"], r["image_id"], content[(r["item_id"], r["image_id"])],
                                      int(r["region"]), r["label"]) not in shown]
    now = datetime.now(timezone.utc)
    common = {"run_id": run_id, "scanned_at": now, "model_version": model_version,
              "gallery_version": gmeta["gallery_version"]}
    tables, by_queue = _queues(new, common, None, ())
    summary = {
        "run_id": run_id, "run_date": run_date, "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "seconds": round(time.time() - t0, 2),
        "rows_in": len(index), "rows_scanned": 0, "rows_reused": len(col.reused), "rows_errored": 0,
        "regions": col.regions, "regions_per_s": round(col.regions / max(seconds, 1e-9), 1),
        "flagged": len(new), "flagged_all": len(col.flagged), "flagged_by_queue": {q: len(v) for q, v in
                                                                                   sorted(by_queue.items())},
        "errors_by_stage": {}, "stage_seconds": {"stored_match": seconds},
        "store": {"uri": redact(cfg.store), "key": store.key, "match_version": version, "previous": previous},
        "versions": _versions(det_cfg, emb_cfg, gmeta, thresholds, calibration, mode, cfg.ocr.enabled),
        "config": config_io.to_dict(cfg),
    }
    summary["outputs"] = output.write_run(cfg.out, run_id, run_date, tables, _table([], ERRORS, {}), summary,
                                          config_io.to_dict(cfg))
    store.write_flags(version, run_id, _flag_keys(col.flagged, content))
    log.info("rematch.done", **{k: summary[k] for k in ("rows_in", "regions", "regions_per_s", "flagged",
                                                        "flagged_all", "seconds")})
    return summary


def _resume(cfg: ScanConfig, run_id: str, unique: pa.Table, model_version: str, gallery_version: str,
            thresholds) -> tuple[Checkpoint | None, list[dict]]:
    """This run's checkpoint, and the images an earlier attempt of it finished (if its inputs
    and settings were the same). A default run id (a timestamp) is never resumed."""
    if not cfg.checkpoint_every:
        return None, []
    settings = config_io.to_dict(cfg)
    for k in ("run_id", "run_date", "engine", "ray", "checkpoint_every", "resume", "max_error_rate"):
        settings.pop(k, None)
    for part, keys in (("detector", ("batch_size", "device", "threads")), ("match", ("search_batch",)),
                       ("embedder", ("batch_size", "device", "threads")), ("ocr", ("actors", "device", "threads"))):
        for k in keys:  # how fast, not what: a resumed run may change these
            settings[part].pop(k, None)
    keys = hashlib.sha256("\n".join(f"{a}\t{b}\t{c}" for a, b, c in zip(
        *(unique.column(k).to_pylist() for k in stages.KEYS))).encode()).hexdigest()
    fp = fingerprint({"settings": settings, "manifest_rows": keys, "models": model_version,
                      "gallery": gallery_version, "thresholds": dataclasses.asdict(thresholds)})
    ckpt = Checkpoint(cfg.out, run_id, fp)
    if not cfg.resume:
        ckpt.clear()
        return ckpt, []
    done = ckpt.load() or []
    if done:
        log.info("scan.resuming", from_checkpoint=ckpt.dir, images_done=len(done), parts=ckpt.parts_written)
    return ckpt, done


def _without(table: pa.Table, keys: set) -> pa.Table:
    if not keys:
        return table
    mask = [k not in keys for k in zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist())]
    return table.filter(pa.array(mask, pa.bool_()))


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (a manifest file is no folder: nothing is inside it)."""
    if storage.is_s3(path) != storage.is_s3(folder) or folder.endswith(".parquet"):
        return False
    a, b = path.rstrip("/") + "/", folder.rstrip("/") + "/"
    if not storage.is_s3(folder):
        a, b = os.path.realpath(a) + "/", os.path.realpath(b) + "/"
    return a.startswith(b)


def allowed_roots(cfg: ScanConfig) -> tuple:
    """Where images may be read from: ``fetch.allowed_roots``, or by default the local manifest's
    own folder (and any s3:// URI) — a manifest row cannot make the sweep read /etc/passwd."""
    def local(p: str) -> str:  # symlinks and ".." resolved once here, not per image
        return os.path.realpath(storage.resolve(p)[1])
    if cfg.fetch.allowed_roots:
        return tuple(r if storage.is_s3(r) else local(r) for r in cfg.fetch.allowed_roots)
    if storage.is_s3(cfg.manifest):
        return ()
    m = local(cfg.manifest)
    return (m if os.path.isdir(m) else os.path.dirname(m),)


def too_many_errors(summary: dict, max_error_rate: float) -> str | None:
    """Why a run that published should still exit non-zero: nothing scanned at all (every row
    refused or errored), or more errored rows than ``max_error_rate`` allows. None if neither."""
    rows_in, errored = summary["rows_in"], summary["rows_errored"]
    if not rows_in:
        return None  # a quiet night: an empty run is published and that is fine
    if summary["rows_scanned"] + summary["rows_reused"] == 0:
        return (f"nothing was scanned: all {rows_in} rows were refused or errored "
                f"(errors by stage: {summary['errors_by_stage']}); see {summary['outputs']['errors']}")
    if errored / rows_in > max_error_rate:
        return (f"{errored} of {rows_in} rows errored ({errored / rows_in:.1%}), more than max_error_rate "
                f"{max_error_rate:.1%} (errors by stage: {summary['errors_by_stage']}); see {summary['outputs']['errors']}")
    return None


def _check_calibration(cfg: ScanConfig, calibration: dict | None, mode: str, thresholds) -> None:
    """Say which thresholds this sweep applies, and why not the calibrated ones when it can't."""
    if calibration is None:
        log.warning("scan.uncalibrated", collection=cfg.collection, threshold=thresholds.default,
                    note="no calibration for this gallery version: every category uses the default "
                         "threshold (run `logoscan calibrate`)")
    elif calibration.get("inherited"):
        inh = calibration["inherited"]
        log.warning("scan.calibration_inherited", collection=cfg.collection,
                    from_gallery_version=inh.get("from_gallery_version"),
                    labels_not_calibrated=len(inh.get("labels_not_calibrated") or []),
                    note="this gallery version carries the previous version's calibration (same embedder); "
                         "labels added since get their category's threshold: re-run `logoscan calibrate`")
    elif cfg.policy.use_calibration and not thresholds.by_category:
        log.warning("scan.calibration_mode_missing", mode=mode, calibrated=sorted(calibration["modes"]),
                    note="the gallery was calibrated without OCR fusion: calibrate with --ocr to get "
                         "thresholds for fused distances; the default threshold applies")
    elif mode == "ocr" and cfg.policy.use_calibration and (calibration["ocr"]["weight"], calibration["ocr"]["floor"]) != (cfg.ocr.weight, cfg.ocr.floor):
        raise ScanError(f"the gallery's OCR calibration used weight/floor {calibration['ocr']['weight']}/"
                        f"{calibration['ocr']['floor']} but this sweep fuses with {cfg.ocr.weight}/{cfg.ocr.floor}: "
                        "use the same settings or calibrate again")
    else:
        log.info("scan.thresholds", mode=mode, categories=thresholds.by_category, classes=len(thresholds.by_class),
                 pinned=thresholds.pinned, default=thresholds.default)


def _carry(table: pa.Table, manifest: pa.Table, columns) -> pa.Table:
    if not columns:
        return table
    lookup = {}
    for row in manifest.select(["item_id", "image_id", *columns]).to_pylist():
        lookup.setdefault((row["item_id"], row["image_id"]), row)
    keys = list(zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist()))
    for c in columns:
        table = table.append_column(c, pa.array([lookup[k][c] for k in keys],
                                                type=manifest.schema.field(c).type))
    return table

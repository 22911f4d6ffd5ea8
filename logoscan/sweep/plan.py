"""What a run will do, decided before any work: its ids, the gallery version and thresholds it
applies, the models, which images the embedding store already holds, and what an earlier attempt
of the same run finished. The result is a typed ``RunPlan`` the engines and the publisher read."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from logoscan import config_io, output, stages, storage
from logoscan.checkpoint import Checkpoint, fingerprint
from logoscan.config import ScanConfig
from logoscan.gallery import GalleryError, connect, read_metadata, redact
from logoscan.log import get_logger
from logoscan.models import default_artifact_path
from logoscan.store import Store, Writer, content_keys, store_key
from logoscan.sweep.errors import ScanError
from logoscan.thresholds import Thresholds, read_calibration, resolve_thresholds

log = get_logger("logoscan.sweep")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run decided at its start that the engines, actors and publisher need."""
    run_id: str
    run_date: str
    started: datetime
    milvus_uri: str          # where this run searches: the configured URI, or the .db served for the run
    gallery: dict            # the gallery version's metadata (pinned: an alias resolved once)
    calibration: dict | None
    thresholds: Thresholds
    mode: str                # "image" | "ocr" (fused distances)
    detector: dict           # the artifacts' config.json
    embedder: dict

    @property
    def model_version(self) -> str:
        return f"{self.detector['version']}+{self.embedder['version']}"

    @property
    def embedder_version(self) -> str:
        return self.embedder["version"]

    @property
    def gallery_version(self) -> str:
        return self.gallery["gallery_version"]

    def versions(self, ocr_enabled: bool) -> dict:
        """The summary's ``versions``: what produced these flags."""
        cal, th = self.calibration, self.thresholds
        return {"detector": self.detector["version"], "embedder": self.embedder["version"],
                "gallery": self.gallery_version, "threshold_default": th.default,
                "calibration": {"created_at": cal["created_at"], "mode": self.mode,
                                "inherited_from": (cal.get("inherited") or {}).get("from_gallery_version"),
                                "applied": bool(th.by_category), "categories": th.by_category,
                                "classes": len(th.by_class)} if cal else None,
                "thresholds_pinned": th.pinned, "ocr": ocr_enabled}


@dataclass
class StorePlan:
    """The embedding store's part in a scan: the store, the writer of newly scanned images, every
    row's content key, and the images it already holds for this content and these models."""
    store: Store
    writer: Writer | None
    content: dict = field(default_factory=dict)   # (item_id, image_id) -> content key
    reuse: dict = field(default_factory=dict)     # (item_id, image_id) -> the store part holding it
    info: dict = field(default_factory=dict)      # the summary's "store"


def artifact_config(kind: str, uri: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(uri or default_artifact_path(kind), "config.json")))


def make_plan(cfg, uri: str, run_id: str, run_date: str, started: datetime) -> tuple[RunPlan, object]:
    """The plan, and ``cfg`` with the gallery pinned to the version the alias names now."""
    det_cfg = artifact_config("detector", cfg.detector.artifact)
    emb_cfg = artifact_config("embedder", cfg.embedder.artifact)
    gmeta, calibration, thresholds, mode = gallery(cfg, emb_cfg, uri)
    return (RunPlan(run_id=run_id, run_date=run_date, started=started, milvus_uri=uri, gallery=gmeta,
                    calibration=calibration, thresholds=thresholds, mode=mode, detector=det_cfg, embedder=emb_cfg),
            pin_gallery(cfg, gmeta))


def run_ids(cfg, prefix: str) -> tuple[datetime, str, str]:
    started = datetime.now(timezone.utc)
    run_id = cfg.run_id or f"{prefix}-" + started.strftime("%Y%m%dT%H%M%SZ")
    run_date = str(cfg.run_date) if cfg.run_date else started.strftime("%Y-%m-%d")  # YAML reads dates as dates
    try:
        datetime.strptime(run_date, "%Y-%m-%d")
    except ValueError:
        raise ScanError(f"run_date must look like YYYY-MM-DD, not {cfg.run_date!r}") from None
    return started, run_id, run_date


def gallery(cfg, emb_cfg: dict, uri: str) -> tuple[dict, dict | None, Thresholds, str]:
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
    check_calibration(cfg, calibration, mode, thresholds)
    return gmeta, calibration, thresholds, mode


def pin_gallery(cfg, gmeta: dict):
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
                # tiles 1: the keys stores had; otherwise the windows change the regions found
                **({"tiling": det.tiling()} if det.tiles > 1 else {}),
                "ocr": {"languages": list(ocr.languages), "model_dir": ocr.model_dir,
                        "min_confidence": ocr.min_confidence} if ocr.enabled else None}
    return Store(uri, store_key(model_version, settings), {"model_version": model_version, "settings": settings})


def plan_store(cfg: ScanConfig, run_id: str, unique: pa.Table, todo: pa.Table, model_version: str) -> StorePlan:
    """With the store on: every row's content key, the writer for newly scanned images and, for
    an incremental run, the rows the store already holds for this content and these models."""
    store = open_store(cfg.store.uri or storage.join(cfg.out, "store"), model_version, cfg.detector, cfg.ocr)
    t0 = time.time()
    roots = cfg.fetch.allowed_roots
    allowed = unique.filter(pa.array([stages.readable(u, roots) for u in unique.column("image_uri").to_pylist()],
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
    return StorePlan(store, writer, ck, reuse, info)


def resume(cfg: ScanConfig, run_id: str, unique: pa.Table, plan: RunPlan) -> tuple[Checkpoint | None, list[dict]]:
    """This run's checkpoint, and the images an earlier attempt of it finished (if its inputs
    and settings were the same). A default run id (a timestamp) is never resumed."""
    if not cfg.checkpoint_every:
        return None, []
    settings = resume_settings(cfg)
    keys = hashlib.sha256("\n".join(f"{a}\t{b}\t{c}" for a, b, c in zip(
        *(unique.column(k).to_pylist() for k in stages.KEYS))).encode()).hexdigest()
    fp = fingerprint({"settings": settings, "manifest_rows": keys, "models": plan.model_version,
                      "gallery": plan.gallery_version, "thresholds": dataclasses.asdict(plan.thresholds)})
    ckpt = Checkpoint(cfg.out, run_id, fp)
    if not cfg.resume:
        ckpt.clear()
        return ckpt, []
    done = ckpt.load() or []
    if done:
        log.info("scan.resuming", from_checkpoint=ckpt.dir, images_done=len(done), parts=ckpt.parts_written)
    return ckpt, done


def resume_settings(cfg: ScanConfig) -> dict:
    """The settings a resumed run must share with the attempt it resumes: what, not how fast."""
    settings = config_io.to_dict(cfg)
    for k in ("run_id", "run_date", "engine", "ray", "checkpoint_every", "resume", "max_error_rate"):
        settings.pop(k, None)
    for part, keys in (("detector", ("batch_size", "device", "threads")), ("match", ("search_batch",)),
                       ("embedder", ("batch_size", "device", "threads")), ("ocr", ("actors", "device", "threads"))):
        for k in keys:  # a resumed run may change these
            settings[part].pop(k, None)
    return settings


def resume_streaming(cfg: ScanConfig, run_id: str, files: list[tuple[str, int]], plan: RunPlan
                     ) -> tuple[Checkpoint, list[str]]:
    """The streaming scan's checkpoint (its workers' parts: logoscan.sweep.stream) and the parts an
    earlier attempt of this run left, if its inputs and settings were the same: the manifest's
    files as they are now (name, size, modification time or ETag), not its rows, which the driver
    never reads. Without checkpoints (``checkpoint_every: 0``) or ``resume: false`` the parts of
    an earlier attempt are dropped."""
    def version(f: str) -> str:
        fs, path = storage.resolve(f)
        info = fs.get_file_info(path)
        return f"{f}\t{info.size}\t{info.mtime_ns}"
    fp = fingerprint({"settings": resume_settings(cfg), "streaming": True,
                      "manifest_files": [version(f) for f, _ in files], "models": plan.model_version,
                      "gallery": plan.gallery_version, "thresholds": dataclasses.asdict(plan.thresholds)})
    ckpt = Checkpoint(cfg.out, run_id, fp)
    if not cfg.checkpoint_every or not cfg.resume:
        ckpt.clear()
        return ckpt, []
    if ckpt.load() is None:  # none, or another fingerprint (then discarded, and said so)
        return ckpt, []
    from logoscan.sweep.stream import parts
    done = parts(storage.join(ckpt.dir, "rows"))
    if done:
        log.info("scan.resuming", from_checkpoint=ckpt.dir, parts=len(done))
    return ckpt, done


def check_calibration(cfg, calibration: dict | None, mode: str, thresholds) -> None:
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

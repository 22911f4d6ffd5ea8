"""The collecting engines: where fetch → detect → (OCR) → embed → match → decide run when the
driver collects the results. ``run_ray``: Ray Data actor pools with the driver matching
(``ray.matcher_actors: 0``); ``run_local``: in-process, the same stage functions, for tests and
debugging; ``run_stored``: images the embedding store holds, matched in the driver. With a matcher
actor pool the Ray engine streams instead (logoscan.sweep.stream). Shared: the actors' CPU
reservation (``actor_cpus``, ``pools``) and the stages' arguments."""
from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from logoscan import stages
from logoscan.actors import MatchActor
from logoscan.config import ScanConfig
from logoscan.log import get_logger
from logoscan.store import Store
from logoscan.sweep.collect import Collector
from logoscan.sweep.plan import RunPlan

log = get_logger("logoscan.sweep")


def detect_kwargs(cfg, plan: RunPlan) -> dict:
    return dict(det_cfg=cfg.detector, crop_size=plan.embedder["input_size"], crop_pad=plan.embedder["crop_pad"],
                max_pixels=cfg.fetch.max_pixels, run_id=plan.run_id)


def match_kwargs(cfg, plan: RunPlan, keep_embedding: bool = False) -> dict:
    return dict(milvus_uri=plan.milvus_uri, collection=cfg.collection, match_cfg=cfg.match, policy=cfg.policy,
                thresholds=plan.thresholds, embedder_version=plan.embedder_version, run_id=plan.run_id,
                ocr_cfg=cfg.ocr, keep_embedding=keep_embedding)


def run_local(manifest: pa.Table, cfg: ScanConfig, plan: RunPlan, col: Collector) -> dict:
    import torch

    from logoscan.actors import DetectActor, EmbedActor, OcrActor, fetch
    det = DetectActor(**detect_kwargs(cfg, plan))
    ocr = OcrActor(cfg.ocr, plan.run_id) if cfg.ocr.enabled else None
    emb = EmbedActor(cfg.embedder, plan.run_id)
    # after the actors: each sets the (process-wide) thread count for itself, and the embedder's
    # single thread left the detector on one core (half the in-process engine's throughput)
    torch.set_num_threads(max(cfg.detector.threads, cfg.embedder.threads))
    mat = MatchActor(**match_kwargs(cfg, plan))
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
        extra = {} if rcfg.worker_niceness is None else {"_system_config": {"worker_niceness": rcfg.worker_niceness}}
        ray.init(num_cpus=rcfg.num_cpus, include_dashboard=False, logging_level="WARNING", **extra)


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


def pools(cfg: ScanConfig, matchers: int) -> tuple[bool, int, float]:
    """Whether detect and embed share an actor, the embedder actors, the CPUs each model actor
    reserves. ``ray.embedder_actors: 0``: embed inside the detector actors, except with OCR on,
    which reads the crops between detect and embed (then a pool of one)."""
    import ray
    r = cfg.ray
    fused = r.embedder_actors == 0 and not cfg.ocr.enabled
    n_emb = 0 if fused else max(1, r.embedder_actors)
    cpa = actor_cpus(r, r.detector_actors + n_emb + (cfg.ocr.actors if cfg.ocr.enabled else 0),
                     ray.cluster_resources().get("CPU", 0.0), matchers)
    return fused, n_emb, cpa


def run_ray(manifest: pa.Table, cfg: ScanConfig, plan: RunPlan, col: Collector) -> dict:
    import ray

    from logoscan.actors import DetectActor, DetectEmbedActor, EmbedActor, OcrActor, fetch
    dctx = ray.data.DataContext.get_current()
    dctx.enable_progress_bars = False  # our own scan.progress log lines instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    r = cfg.ray
    gpus = r.num_gpus_per_actor
    fused, n_emb, cpa = pools(cfg, r.matcher_actors)
    n_blocks = max(1, math.ceil(manifest.num_rows / r.fetch_batch))
    ds = ray.data.from_arrow(manifest.select(list(stages.KEYS))).repartition(n_blocks)
    ds = ds.map_batches(fetch, fn_kwargs={"cfg": cfg.fetch}, batch_size=r.fetch_batch,
                        batch_format="numpy", num_cpus=0.25)
    det_kw = detect_kwargs(cfg, plan)
    ds = ds.map_batches(DetectEmbedActor if fused else DetectActor,
                        fn_constructor_kwargs=dict(det_kw, emb_cfg=cfg.embedder) if fused else det_kw,
                        batch_size=r.fetch_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=r.detector_actors),
                        num_cpus=cpa, num_gpus=gpus)
    if cfg.ocr.enabled:
        ds = ds.map_batches(OcrActor, fn_constructor_kwargs=dict(ocr_cfg=cfg.ocr, run_id=plan.run_id),
                            batch_size=r.fetch_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=cfg.ocr.actors),
                            num_cpus=cpa, num_gpus=gpus)
    if not fused:
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=dict(emb_cfg=cfg.embedder, run_id=plan.run_id),
                            batch_size=cfg.embedder.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_emb),
                            num_cpus=cpa, num_gpus=gpus)
    # the driver matches, with one client: this engine runs only under ray.matcher_actors 0
    # (a matcher pool streams: logoscan.sweep.stream)
    owner = MatchActor(**match_kwargs(cfg, plan))
    try:
        for b in ds.iter_batches(batch_format="numpy", batch_size=cfg.match.search_batch):
            col.capture(b)
            col.add(owner(b))
    finally:
        owner.matcher.close()
    return {}


def run_stored(store: Store, wanted: dict, cfg, plan: RunPlan, col: Collector) -> float:
    """Match images from the embedding store in the driver, with one client: no fetch, decode,
    detect or embed (``engine: local`` and ``ray.matcher_actors: 0``; a matcher pool streams:
    logoscan.sweep.stream)."""
    if not wanted:
        return 0.0
    t0 = time.perf_counter()  # the matching loop (store reads, searches, decisions)
    owner = MatchActor(**match_kwargs(cfg, plan))
    try:
        for b in store.entries(wanted, cfg.match.search_batch):
            col.add(owner(b), status="reused")
    finally:
        owner.matcher.close()
    return round(time.perf_counter() - t0, 3)

"""The collecting engines: where fetch → detect → (OCR) → embed → match → decide run when the
driver collects the results. ``run_ray``: Ray Data actor pools with the driver matching
(``ray.matcher_actors: 0``); ``run_local``: in-process, the same stage functions, for tests and
debugging; ``run_stored``: images the embedding store holds, matched in the driver. With a matcher
actor pool the Ray engine streams instead (logoscan.sweep.stream). Shared: the actors' CPU
reservation and the pools' sizes (``actor_cpus``, ``detector_pool``, ``pools``) and the stages'
arguments."""
from __future__ import annotations

import dataclasses
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
from logoscan.sweep.errors import ScanError
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
    cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector,
                                                                threads=cfg.detector.threads or process_cpus()))
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


# measured on 2 CPUs: 0.75 free ran a sweep without the hash shuffle, 0.5 and 0.25 stalled. Over
# stream.SHUFFLE_ROWS manifest rows the hash shuffle's block tasks take 1 CPU each (Ray Data's
# default): there two detector actors leaving 0.75 free took 61 s for 13 rows, leaving 1.0 free 31-33 s
FREE_FOR_RAY_DATA = 1.0


def process_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def actor_cpus(r, n_actors: int, cluster_cpus: float, matchers: int = 0, warn: bool = True) -> float:
    """CPUs each model actor reserves. Ray Data's own tasks (reading and splitting the manifest)
    need CPU left over: with detector + OCR + embedder actors at 0.5 each on 2 CPUs the sweep
    stalled with every actor idle and no error. So the reservation is lowered to leave
    ``FREE_FOR_RAY_DATA`` besides the fetch tasks' 0.25 and the matcher actors' own reservation,
    and a warning says so (``warn``: the actor count was configured, not sized by the sweep)."""
    free = cluster_cpus - 0.25 - FREE_FOR_RAY_DATA - matchers * r.matcher_cpus  # the fetch tasks hold 0.25
    if n_actors * r.cpus_per_actor <= free or n_actors == 0:
        return r.cpus_per_actor
    cpa = max(round(free / n_actors, 3), 0.05)
    (log.warning if warn else log.info)(
        "ray.actor_cpus_lowered", configured=r.cpus_per_actor, used=cpa, actors=n_actors, cluster_cpus=cluster_cpus,
        note="the actors would leave too little CPU for Ray Data's own tasks (the sweep would stall)")
    return cpa


# a second detector actor loads a second copy of the models (~8 s of a 2-core machine): on 400
# images (4 blocks of 128) two 1-thread actors ran the bench's sweep 10% slower than one of 2
# threads, on 2,000 images 3-31% faster (docs/bench/throughput.md)
BLOCKS_PER_ACTOR = 4
# torch threads of each CPU detector actor at least when ``detector.threads`` is unset: on 2 cores,
# two actors of 2 threads (4 threads on 2 cores) ran a 2,000-image sweep in 80.4 and 85.0 s against
# 99.0-117.4 s for two actors of 1 thread, and one actor of 2 threads took 135.5 and 161.3 s. While
# one actor decodes and crops in Python (one thread), the other's two threads can use both cores
# (docs/bench/throughput.md). Not measured on larger nodes
MIN_CPU_THREADS = 2


def detector_pool(r, threads: int | None, others: int, cpus: float, gpus: float, node_cpus: float,
                  blocks: int | None = None) -> tuple[int, int]:
    """The detector actors and each one's torch threads, for a cluster of ``cpus`` / ``gpus`` whose
    largest node has ``node_cpus``, beside ``others`` model actors (embedder, OCR).
    ``ray.detector_actors: "auto"``: on GPUs (``num_gpus_per_actor`` > 0) as many as the GPUs hold
    beside the others (each takes the same share); on CPUs one per ``threads`` CPUs (1 when None),
    less one CPU per other actor; and one per ``BLOCKS_PER_ACTOR`` of the run's ``blocks`` of
    ``fetch_batch`` images at most (each actor loads its own copy of the models). ``detector.threads:
    None``: the CPUs each actor has (the cluster's over all model actors, at most one node's), and
    ``MIN_CPU_THREADS`` at least (at most a node's CPUs). On 2 CPUs that is 2 actors of 2 threads from
    1,024 images on, which ran the sweep 15-25% faster than 2 actors of 1 thread and those 3-31%
    faster than 1 actor of 2 (docs/bench/throughput.md)."""
    if r.detector_actors != "auto":
        n = r.detector_actors
    elif r.num_gpus_per_actor > 0:
        n = int(gpus / r.num_gpus_per_actor + 1e-9) - others
    else:
        n = int(cpus // (threads or 1)) - others
    if r.detector_actors == "auto" and blocks is not None:
        n = min(n, blocks // BLOCKS_PER_ACTOR)
    n = max(1, n)
    return n, threads or max(1, min(max(int(cpus // (n + others)), MIN_CPU_THREADS), int(node_cpus)))


def pools(cfg: ScanConfig, matchers: int, images: int | None = None) -> tuple[ScanConfig, bool, int, float]:
    """The Ray sweep's model pools: the config with ``ray.detector_actors`` and ``detector.threads``
    sized for this cluster and a run of ``images`` (``detector_pool``; None: not known), whether
    detect and embed share an actor, the embedder actors, the CPUs each model actor reserves.
    ``ray.embedder_actors: 0``: embed inside the detector actors, except with OCR on, which reads
    the crops between detect and embed (then a pool of one)."""
    import ray
    r = cfg.ray
    fused = r.embedder_actors == 0 and not cfg.ocr.enabled
    n_emb = 0 if fused else max(1, r.embedder_actors)
    n_ocr = cfg.ocr.actors if cfg.ocr.enabled else 0
    res = ray.cluster_resources()
    cpus = res.get("CPU", 0.0)
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((n.get("CPU", 0.0) for n in alive), default=cpus)
    node_memory = max((n.get("memory", 0.0) for n in alive), default=0.0)
    if r.actor_memory_mib * 2 ** 20 > node_memory:  # Ray Data would wait for such an actor forever
        raise ScanError(f"ray.actor_memory_mib={r.actor_memory_mib}: no node of this Ray cluster has that much "
                        f"memory for a model actor (the largest offers {node_memory / 2 ** 20:,.0f} MiB); lower it, "
                        "or 0 for no request")
    blocks = None if images is None else max(1, math.ceil(images / r.fetch_batch))
    n_det, threads = detector_pool(r, cfg.detector.threads, n_emb + n_ocr, cpus, res.get("GPU", 0.0), node_cpus,
                                   blocks)
    cpa = actor_cpus(r, n_det + n_emb + n_ocr, cpus, matchers, warn=r.detector_actors != "auto")
    log.info("ray.pools", detector_actors=n_det, detector_threads=threads, sized=r.detector_actors == "auto",
             embedder_actors=n_emb, ocr_actors=n_ocr, matcher_actors=matchers, cpus_per_actor=cpa, cluster_cpus=cpus)
    cfg = dataclasses.replace(cfg, ray=dataclasses.replace(r, detector_actors=n_det),
                              detector=dataclasses.replace(cfg.detector, threads=threads))
    return cfg, fused, n_emb, cpa


def run_ray(manifest: pa.Table, cfg: ScanConfig, plan: RunPlan, col: Collector) -> dict:
    import ray

    from logoscan.actors import DetectActor, DetectEmbedActor, EmbedActor, OcrActor, fetch, model_pool_options
    dctx = ray.data.DataContext.get_current()
    dctx.enable_progress_bars = False  # our own scan.progress log lines instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    cfg, fused, n_emb, cpa = pools(cfg, cfg.ray.matcher_actors, manifest.num_rows)
    r = cfg.ray
    model_pool = model_pool_options(r, cpa)  # every model pool's CPUs, GPUs, memory and environment
    n_blocks = max(1, math.ceil(manifest.num_rows / r.fetch_batch))
    ds = ray.data.from_arrow(manifest.select(list(stages.KEYS))).repartition(n_blocks)
    ds = ds.map_batches(fetch, fn_kwargs={"cfg": cfg.fetch}, batch_size=r.fetch_batch,
                        batch_format="numpy", num_cpus=0.25)
    det_kw = detect_kwargs(cfg, plan)
    ds = ds.map_batches(DetectEmbedActor if fused else DetectActor,
                        fn_constructor_kwargs=dict(det_kw, emb_cfg=cfg.embedder) if fused else det_kw,
                        batch_size=r.fetch_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=r.detector_actors),
                        **model_pool)
    if cfg.ocr.enabled:
        ds = ds.map_batches(OcrActor, fn_constructor_kwargs=dict(ocr_cfg=cfg.ocr, run_id=plan.run_id,
                                                                 keep_freed_mib=cfg.detector.keep_freed_mib),
                            batch_size=r.fetch_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=cfg.ocr.actors),
                            **model_pool)
    if not fused:
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=dict(emb_cfg=cfg.embedder, run_id=plan.run_id,
                                                                   keep_freed_mib=cfg.detector.keep_freed_mib),
                            batch_size=cfg.embedder.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_emb),
                            **model_pool)
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

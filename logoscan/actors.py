"""Thin Ray Data actor classes: load a model (or a Milvus client) once in __init__, call the pure
stage function in __call__. Tests call the stage functions directly, in-process."""
from __future__ import annotations

import dataclasses
import os

from logoscan import stages
from logoscan.log import configure
from logoscan.metrics import metered


def fetch(batch: dict, cfg) -> dict:
    """The fetch stage as a Ray Data task (no state to load)."""
    return metered("fetch", stages.fetch, batch, cfg)


def pick_device(requested: str) -> str:
    import torch
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


# The environment every model actor's process starts with. libgomp (torch's OpenMP on Linux) lets a
# thread that waits at an OpenMP barrier spin on its core for a while (OMP_WAIT_POLICY unset). With
# more model threads than cores (2 actors of 2 threads on 2 cores, the default pool there) a spinning
# thread can hold a core another process's thread needs: two model loops in lockstep ran 3x slower
# for it; the sweep measured no difference either way (docs/bench/throughput.md, 2026-12-03).
# PASSIVE makes a waiting thread sleep. libgomp reads it when torch loads it, so it must be in the
# process's environment from its start: a Ray runtime_env, not os.environ in __init__.
MODEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def model_actor_options() -> dict:
    """Ray remote options for every model actor pool: a runtime_env with ``MODEL_ENV`` (Ray merges
    its env_vars with the job's), less any variable the driver's own environment sets (the user's
    choice wins; one set only in a submitted job's runtime_env does not: the pool's env_vars win)."""
    env = {k: v for k, v in MODEL_ENV.items() if k not in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}


def model_pool_options(r, cpus: float) -> dict:
    """Ray remote options of every model actor pool (detector, OCR, embedder), from ``RayConfig``
    ``r``: the CPUs each actor reserves (sized by sweep.engines.pools), its GPUs, the memory it
    reserves (``ray.actor_memory_mib``) and the environment its process starts with."""
    memory = {"memory": r.actor_memory_mib * 2 ** 20} if r.actor_memory_mib else {}
    return dict(num_cpus=cpus, num_gpus=r.num_gpus_per_actor, **memory, **model_actor_options())


def model_process(run_id: str, threads: int | None, keep_freed_mib: int) -> int:
    """What every model actor sets before it loads its model: the run's logging, torch's threads
    (None: as the process has them) and glibc's allocator (``logoscan.models.alloc``: freed
    activations stay in the heap for the next batch). Returns the MiB kept (0: glibc's defaults)."""
    import torch
    from logoscan.models.alloc import keep_freed
    configure(run_id)
    if threads:
        torch.set_num_threads(threads)
    return keep_freed(keep_freed_mib)  # before the model allocates anything; process-wide, the first call wins


class Models:
    """Load the detector/embedder artifacts named by the config ('' = the shipped defaults)."""

    @staticmethod
    def load(kind: str, artifact: str, device: str):
        from logoscan.models import default_artifact_path, load_artifact
        return load_artifact(artifact or default_artifact_path(kind), device=device, inference=True)


class DetectActor:
    def __init__(self, det_cfg, crop_size: int, crop_pad: float, max_pixels: int, run_id: str):
        from logoscan.log import get_logger
        from logoscan.models.detector import resolve_precision
        # threads None: as the process has them (the sweep sizes them: engines.pools)
        kept = model_process(run_id, det_cfg.threads, det_cfg.keep_freed_mib)
        self.device = pick_device(det_cfg.device)
        # "auto" resolved here, on the worker that runs the model (its CPU or GPU decides)
        self.cfg = dataclasses.replace(det_cfg, precision=resolve_precision(det_cfg.precision, self.device))
        self.crop_size, self.crop_pad, self.max_pixels = crop_size, crop_pad, max_pixels
        self.model, self.model_cfg = Models.load("detector", det_cfg.artifact, self.device)
        if det_cfg.input_size:
            from logoscan.models.detector import set_input_size
            set_input_size(self.model, det_cfg.input_size)
        get_logger(__name__).info("detector.loaded", device=self.device, precision=self.cfg.precision,
                                  batch_size=self.cfg.batch_size, threads=det_cfg.threads,
                                  keep_freed_mib=kept)

    def __call__(self, batch: dict) -> dict:
        return metered("detect", stages.detect, batch, self.model, self.model_cfg, self.cfg, self.crop_size,
                       self.crop_pad, self.max_pixels, self.device)


class EmbedActor:
    def __init__(self, emb_cfg, run_id: str, keep_freed_mib: int = 0):
        model_process(run_id, emb_cfg.threads, keep_freed_mib)
        self.cfg = emb_cfg
        self.device = pick_device(emb_cfg.device)
        self.model, self.model_cfg = Models.load("embedder", emb_cfg.artifact, self.device)

    def __call__(self, batch: dict) -> dict:
        return metered("embed", stages.embed, batch, self.model, self.model_cfg, self.cfg, self.device)


class DetectEmbedActor:
    """Detect, then embed, in one actor (``ray.embedder_actors: 0``): one torch process and one
    object-store hop fewer. On a small node a separate embedder actor cost three times its own
    work in CPU (docs/scaling.md); on a GPU node both models share the GPU anyway."""

    def __init__(self, det_cfg, emb_cfg, crop_size: int, crop_pad: float, max_pixels: int, run_id: str):
        self.detect = DetectActor(det_cfg, crop_size, crop_pad, max_pixels, run_id)
        self.embed = EmbedActor(emb_cfg, run_id, det_cfg.keep_freed_mib)
        import torch
        torch.set_num_threads(max(det_cfg.threads or torch.get_num_threads(), emb_cfg.threads))  # process-wide: the larger

    def __call__(self, batch: dict) -> dict:
        return self.embed(self.detect(batch))


class OcrActor:
    """easyocr on each region's crop (optional stage, between detect and embed)."""

    def __init__(self, ocr_cfg, run_id: str, keep_freed_mib: int = 0):
        from logoscan.ocr import load_reader
        model_process(run_id, ocr_cfg.threads, keep_freed_mib)
        self.cfg = ocr_cfg
        self.reader = load_reader(ocr_cfg.languages, ocr_cfg.model_dir, pick_device(ocr_cfg.device))

    def __call__(self, batch: dict) -> dict:
        return metered("ocr", stages.read_text, batch, self.reader, self.cfg)


class MatchActor:
    """Owns a Milvus client; match + decide. A Ray Data actor pool of them searches a Milvus server
    (the run serves an embedded .db on loopback: logoscan.lite_server); the in-process engine and
    ``ray.matcher_actors: 0`` hold one instance in the driver. ``keep_embedding``: the batch keeps
    its embeddings for the embedding store's writer."""

    def __init__(self, milvus_uri: str, collection: str, match_cfg, policy, thresholds,
                 embedder_version: str, run_id: str, ocr_cfg=None, keep_embedding: bool = False,
                 write_parts: dict | None = None):
        from logoscan.gallery import Matcher
        configure(run_id)
        self.matcher = Matcher(milvus_uri, collection, expect_embedder=embedder_version,
                               unavailable_s=match_cfg.unavailable_s)
        self.cfg, self.policy, self.thresholds, self.ocr = match_cfg, policy, thresholds, ocr_cfg
        self.keep_embedding = keep_embedding
        self.write_parts = write_parts

    def __call__(self, batch: dict) -> dict:
        out = metered("match", lambda b: stages.decide(stages.match(b, self.matcher, self.cfg, self.ocr),
                                                       self.policy, self.thresholds), batch)
        if self.keep_embedding and "embedding" in batch:
            out["embedding"] = batch["embedding"]
        if self.write_parts is not None:  # the streaming scan: this worker writes its block as a part
            from logoscan.sweep.stream import write_part
            return write_part(out, **self.write_parts)
        return out

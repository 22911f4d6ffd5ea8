"""Observability of a sweep: where the time goes, and metrics a Prometheus scraper can read.

- Every stage call goes through ``metered``: its batch seconds are spread over the rows it
  returns, in ``_s_<stage>`` columns that travel with the rows to the driver (the detector, which
  turns images into regions, carries the fetch columns over). The driver sums them: per-stage
  seconds and rows for the Ray engine too, where the stages run in other processes. They are
  worker-seconds (summed over parallel actors), not wall time.
- On Ray, the same calls record Ray metrics (``ray.util.metrics``), which each node's metrics
  agent serves in Prometheus format (``ray start --metrics-export-port``; port 8080 in the
  KubeRay pods, scraped by infra/monitoring/podmonitor.yaml):
  logoscan_stage_rows_total{stage}, logoscan_stage_errors_total{stage},
  logoscan_stage_batch_seconds{stage} (histogram), logoscan_images_total{status},
  logoscan_flagged_total{queue}, logoscan_progress_ratio, logoscan_images_per_second.
  Without Ray (the in-process engine, tests) they are no-ops.
"""
from __future__ import annotations

import time

import numpy as np

from logoscan.log import get_logger

log = get_logger(__name__)
PREFIX = "_s_"
BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]
_metrics: dict | None = None


def _ray_metrics() -> dict | None:
    """This process's metric objects, made once; None outside Ray."""
    global _metrics
    if _metrics is not None:
        return _metrics or None
    try:
        import ray
        if not ray.is_initialized():
            return None
        from ray.util.metrics import Counter, Gauge, Histogram
        _metrics = {
            "rows": Counter("logoscan_stage_rows_total", "rows a stage returned", tag_keys=("stage",)),
            "errors": Counter("logoscan_stage_errors_total", "rows a stage turned into errors", tag_keys=("stage",)),
            "seconds": Histogram("logoscan_stage_batch_seconds", "seconds per batch and stage", BOUNDARIES,
                                 tag_keys=("stage",)),
            "images": Counter("logoscan_images_total", "images finished by the sweep", tag_keys=("status",)),
            "flagged": Counter("logoscan_flagged_total", "regions flagged for review", tag_keys=("queue",)),
            "progress": Gauge("logoscan_progress_ratio", "share of the manifest finished", tag_keys=("run_id",)),
            "rate": Gauge("logoscan_images_per_second", "finished images per second", tag_keys=("run_id",)),
        }
    except Exception as e:  # noqa: BLE001 - metrics must never stop a sweep
        log.warning("metrics.unavailable", error=str(e)[:200])
        _metrics = {}
    return _metrics or None


def _n(batch: dict) -> int:
    return len(batch["kind"]) if "kind" in batch else len(batch["item_id"])


def metered(stage: str, fn, batch: dict, *a, **kw) -> dict:
    t = time.perf_counter()
    out = fn(batch, *a, **kw)
    dt = time.perf_counter() - t
    n = _n(out)
    for k, v in batch.items():  # timings of earlier stages, if this stage made new rows
        if k.startswith(PREFIX) and k not in out:
            out[k] = np.full(n, float(np.sum(v)) / max(n, 1), np.float64)
    out[PREFIX + stage] = np.full(n, dt / max(n, 1), np.float64)
    m = _ray_metrics()
    if m:
        tags = {"stage": stage}
        m["rows"].inc(n, tags=tags)
        m["seconds"].observe(dt, tags=tags)
        if "kind" in out:
            errors = int(np.sum((out["kind"] == "error") & (out.get("error_stage", np.array([""] * n)) == stage)))
            if errors:
                m["errors"].inc(errors, tags=tags)
    return out


def images(status: str, n: int = 1) -> None:
    m = _ray_metrics()
    if m and n:
        m["images"].inc(n, tags={"status": status})


def flagged(by_queue: dict[str, int]) -> None:
    m = _ray_metrics()
    if m:
        for q, n in by_queue.items():
            if n:
                m["flagged"].inc(n, tags={"queue": q})


def progress(run_id: str, ratio: float, rate: float) -> None:
    m = _ray_metrics()
    if m:
        m["progress"].set(ratio, tags={"run_id": run_id})
        m["rate"].set(rate, tags={"run_id": run_id})

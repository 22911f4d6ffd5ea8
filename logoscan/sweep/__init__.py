"""The sweep: manifest → fetch → detect → embed → match → decide → review queues.

One module per concern: ``inputs`` (the manifest, the rows that are not scanned, where images may
be read from), ``plan`` (a run's typed plan: gallery version, thresholds, models, the store's
part, resume), ``engines`` (Ray Data actor pools, matching in a pool of matcher actors against a
Milvus server URI; or in-process), ``collect`` (finished images, progress, checkpoints),
``publish`` (queues, errors, the one summary) and ``run`` (scan and rematch, end to end).

The names below are imported on first use, not with the package. Ray's workers unpickle the
streaming scan's functions from ``logoscan.sweep.stream``, which imports this package first; an
eager import here pulled in ``plan`` → ``logoscan.models`` → torch in every read, shuffle and
matcher worker (a matcher actor: 5.5-6.0 CPU-s a sweep against 2.1-2.3 now; the worker-side
modules peak at 773 MiB RSS with torch, 147 MiB without; docs/bench/throughput.md).
``tests/test_pipeline.py`` checks that the worker-side modules do not import torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "init_ray": "logoscan.sweep.engines",
    "ScanError": "logoscan.sweep.errors",
    "read_manifest": "logoscan.sweep.inputs",
    "too_many_errors": "logoscan.sweep.publish",
    "run_rematch": "logoscan.sweep.run",
    "run_scan": "logoscan.sweep.run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = globals()[name] = getattr(importlib.import_module(_WHERE[name]), name)  # once
        return value
    raise AttributeError(f"module 'logoscan.sweep' has no attribute {name!r}")

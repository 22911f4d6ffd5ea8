"""The sweep: manifest → fetch → detect → embed → match → decide → review queues.

One module per concern: ``inputs`` (the manifest, the rows that are not scanned, where images may
be read from), ``plan`` (a run's typed plan: gallery version, thresholds, models, the store's
part, resume), ``engines`` (Ray Data actor pools, matching in a pool of matcher actors against a
Milvus server URI; or in-process), ``collect`` (finished images, progress, checkpoints),
``publish`` (queues, errors, the one summary) and ``run`` (scan and rematch, end to end).
"""
from logoscan.sweep.engines import init_ray
from logoscan.sweep.errors import ScanError
from logoscan.sweep.inputs import read_manifest
from logoscan.sweep.publish import too_many_errors
from logoscan.sweep.run import run_rematch, run_scan

__all__ = ["ScanError", "init_ray", "read_manifest", "run_rematch", "run_scan", "too_many_errors"]

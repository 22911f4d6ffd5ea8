"""Keeps Ray Data's per-block statistics in the driver bounded.

Ray Data 2.60's operators each keep one ``BlockStats`` per output block for the whole execution
(ray-project/ray#66016, open). A sweep makes a block per ``ray.fetch_batch`` images, so the
driver grew with the manifest (most of its growth at the end of execution: 922 → 1,003 MB from
100k to 500k rows, 918 → 971 MB trimmed; docs/bench/driver_memory.md), and Ray's periodic
iteration-metrics update pickled an ever larger stats object in the driver. Ray has no setting for
it. This callback, registered through Ray's own hook (``DataContext.custom_execution_callback_classes``),
trims each operator's list to its latest ``KEEP`` entries as the execution steps. What that costs:
``ds.stats()`` and Ray's end-of-run summary describe only those blocks; our own summary counts
come from the parts, not from Ray's statistics.

Its own module because it imports Ray Data at import time (its base class), and the callback
class must be importable by name on every process that unpickles the DataContext.
"""
from __future__ import annotations

import ray
from ray.data._internal.execution.execution_callback import ExecutionCallback

KEEP = 1024  # per-block statistics an operator keeps (the latest)


def trim(executor) -> None:
    for op in getattr(executor, "_topology", None) or ():
        kept = getattr(op, "_output_blocks_stats", None)  # private in Ray 2.60 (pinned): a no-op if renamed
        if isinstance(kept, list) and len(kept) > 2 * KEEP:
            del kept[:-KEEP]


class TrimBlockStats(ExecutionCallback):
    def on_execution_step(self, executor) -> None:
        trim(executor)

    def after_execution_succeeds(self, executor) -> None:
        trim(executor)


def register() -> None:
    """Add the callback to the current DataContext (once); a Dataset made after it uses it."""
    ctx = ray.data.DataContext.get_current()
    if TrimBlockStats not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(TrimBlockStats)

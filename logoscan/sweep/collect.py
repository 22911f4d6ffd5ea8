"""The driver's side of a run's results: rows come back per region, an image is finished when
all of its rows have, and only then is it counted, stored and checkpointed. Progress on a
terminal (a bar) or in the log."""
from __future__ import annotations

import sys
import time
from collections import Counter

import numpy as np

from logoscan import metrics
from logoscan.log import get_logger
from logoscan.schema import FLAG_FIELDS

log = get_logger("logoscan.sweep")
PROGRESS_EVERY_S = 10


def flag_row(b: dict, i: int) -> dict:
    """Row ``i`` of a decided batch as a flagged region (FLAG_FIELDS)."""
    out = {}
    for k in FLAG_FIELDS:
        v = b[k][i] if k in b else None
        out[k] = v.tolist() if k == "box" else (v or None) if k == "ocr_text" else v
    return out


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
                    img["flagged"].append(flag_row(b, i))
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

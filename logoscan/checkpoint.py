"""Resume a sweep whose driver died: finished images are checkpointed as the run goes.

Under OUT/_checkpoints/<run_id>/ the driver writes ``run.json`` (what the results depend on: the
manifest, model and gallery versions, thresholds, policy) and, every ``checkpoint_every``
finished images, one ``part-<n>.parquet`` holding those images' outcomes: scanned (with its
flagged regions) or errored. An image is finished only when all of its rows (one per region)
have come back, so a part never holds half an image. Each part is written whole (a local rename
or one S3 PUT: storage.write_bytes), so a driver killed while writing one leaves no torn file behind.

A sweep started again with the same run id, the same inputs and the same settings reads the
parts, skips those images and scans the rest; with any other fingerprint it starts over (and
says so). Publishing the run deletes the checkpoints. Readers never look here (names starting
with "_" are skipped by every listing).
"""
from __future__ import annotations

import hashlib
import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from logoscan import storage
from logoscan.log import get_logger
from logoscan.schema import FLAG_FIELDS as SCHEMA_FLAG_FIELDS, FLAGGED

log = get_logger(__name__)

# a flagged region's fields (schema.FLAG_FIELDS: the one list) but its image's, which the
# record carries once
FLAG_FIELDS = tuple(f for f in SCHEMA_FLAG_FIELDS if f not in ("item_id", "image_id", "image_uri"))
ERROR_FIELDS = ("stage", "error_type", "message")

# one row per finished image (record="image") and one per flagged region (record="flag")
_TYPES = {**{f.name: f.type for f in FLAGGED}, "region": pa.int16(), "queue": pa.string()}
PART = pa.schema([
    ("record", pa.string()), ("item_id", pa.string()), ("image_id", pa.string()), ("image_uri", pa.string()),
    ("status", pa.string()), ("regions", pa.int32()),
    ("stage", pa.string()), ("error_type", pa.string()), ("message", pa.string()),
    *[(f, _TYPES[f]) for f in FLAG_FIELDS],
])


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, out: str, run_id: str, fingerprint: str):
        from logoscan.output import safe_name
        self.dir = storage.join(out, "_checkpoints", safe_name(run_id))
        self.fingerprint = fingerprint
        self.parts_written = 0
        self.meta: dict = {}

    # -------------------------------------------------------------- reading

    def load(self) -> list[dict] | None:
        """The finished images of an earlier attempt of this run (None: nothing to resume).
        Each is {"key", "image_uri", "status", "regions", "error", "flagged"}."""
        try:
            meta = json.loads(storage.read_bytes(storage.join(self.dir, "run.json")))
        except FileNotFoundError:
            return None
        self.meta = meta
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("scan.checkpoint_discarded", where=self.dir, note="an earlier attempt of this run id "
                        "used other inputs or settings; starting over")
            storage.delete_dir(self.dir)
            self.meta = {}
            return None
        try:
            files = storage.list_files(storage.join(self.dir, "parts"), ".parquet")
        except FileNotFoundError:
            files = []
        images: dict[tuple, dict] = {}
        for f in files:
            fs, path = storage.resolve(f)
            for r in pq.read_table(path, filesystem=fs, schema=PART).to_pylist():
                key = (r["item_id"], r["image_id"])
                if r["record"] == "image":
                    img = images.setdefault(key, {"flagged": []})
                    img.update(key=key, image_uri=r["image_uri"], status=r["status"], regions=r["regions"],
                               error={k: r[k] for k in ERROR_FIELDS} if r["status"] == "errored" else None)
                else:
                    images.setdefault(key, {"flagged": []})["flagged"].append(
                        {"item_id": r["item_id"], "image_id": r["image_id"], "image_uri": r["image_uri"],
                         **{k: r[k] for k in FLAG_FIELDS}})
        done = [v for v in images.values() if "status" in v]
        self.parts_written = len(files)
        return done

    # -------------------------------------------------------------- writing

    def start(self, run_date: str) -> None:
        """Record what this attempt's results depend on (before its first part); a resumed run
        keeps its first attempt's run date (its queues' partition), even past midnight."""
        self.meta = {"fingerprint": self.fingerprint, "run_date": self.meta.get("run_date") or run_date}
        storage.write_bytes(storage.join(self.dir, "run.json"), json.dumps(self.meta).encode())

    def write(self, finished: list[dict]) -> None:
        if not finished:
            return
        rows = []
        for img in finished:
            item_id, image_id = img["key"]
            rows.append({"record": "image", "item_id": item_id, "image_id": image_id,
                         "image_uri": img["image_uri"], "status": img["status"], "regions": img["regions"],
                         **(img["error"] or {})})
            rows.extend({"record": "flag", **f} for f in img["flagged"])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=PART), buf, compression="zstd")
        name = f"part-{self.parts_written:06d}-{uuid.uuid4().hex[:8]}.parquet"
        storage.write_bytes(storage.join(self.dir, "parts", name), buf.getvalue())  # whole or nothing
        self.parts_written += 1

    def clear(self) -> None:
        storage.delete_dir(self.dir)

"""The catalog embedding store: every scanned image's regions and embeddings, kept so that a
nightly run does only the work that changed (``scan --incremental``) and a gallery change is
matched against the whole catalog without reading one image (``logoscan rematch``).

Layout under STORE (``store.uri``; default ``OUT/store``; a local folder or an s3:// prefix)::

  key=<detector>+<embedder>.<settings>/        one folder per model version (and the settings
                                               that change regions: score threshold, max regions,
                                               thumbnail size, OCR); other folders are never read
    _key.json                                  what this folder's entries depend on
    regions/part-<UTC time>-<run id>-<n>.parquet   appended by each run: one row per region
                                               (region = -1: an image without any)
    flags/match=<gallery version>.<thresholds>/part-….parquet   the regions a run flagged against
                                               that gallery and those thresholds (what reviewers
                                               were shown); ``rematch`` shows only flags not in it

An entry's identity is (item_id, image_id, content_key). content_key is the manifest's
``image_fingerprint`` when it has one (an S3 inventory's ETag, a hash), else the object's size and
modification time (one stat / HEAD, no GET). The newest part holding an (item_id, image_id) wins;
older entries of it stay until compaction (``logoscan store compact``), which rewrites a key's
parts as one, keeping the newest entry of each image (optionally only the images of a manifest).
Errored images are never stored: the next run tries them again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from logoscan import storage
from logoscan.stages import ERR, _obj
from logoscan.log import get_logger
from logoscan.schema import STORE_FLAGS, STORE_REGIONS

log = get_logger(__name__)

INDEX_COLUMNS = ["item_id", "image_id", "content_key"]


class StoreError(RuntimeError):
    pass


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _files(uri: str) -> list[str]:
    try:
        return storage.list_files(uri, ".parquet")  # sorted: part names start with a UTC time
    except FileNotFoundError:
        return []


def _read(f: str, columns=None) -> pa.Table:
    fs, path = storage.resolve(f)
    return pq.read_table(path, filesystem=fs, columns=columns)


# ------------------------------------------------------------------ identity

def store_key(model_version: str, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{model_version}.{digest}"


def content_keys(table: pa.Table, threads: int = 16) -> list[str | None]:
    """Each manifest row's content key: its ``image_fingerprint``, else size + mtime from one stat
    (S3: a HEAD). None where the image cannot be stat'ed (missing, refused, unsupported): such a
    row is scanned, and the fetch stage gives it its error row."""
    uris = table.column("image_uri").to_pylist()
    given = (table.column("image_fingerprint").to_pylist() if "image_fingerprint" in table.column_names
             else [None] * len(uris))

    def one(i: int) -> str | None:
        if given[i]:
            return f"fp:{given[i]}"
        try:
            fs, path = storage.resolve(str(uris[i]))
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return None
            mtime = info.mtime_ns if info.mtime_ns is not None else 0
            return f"st:{info.size}:{mtime}"
        except Exception:  # noqa: BLE001 - the fetch stage reports it
            return None

    if all(given) or len(uris) < 64:
        return [one(i) for i in range(len(uris))]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, range(len(uris)), chunksize=256))


# ------------------------------------------------------------------ the store

class Store:
    def __init__(self, uri: str, key: str, info: dict):
        from logoscan.output import safe_name
        self.uri, self.key, self.info = uri, key, info
        self.dir = storage.join(uri, f"key={safe_name(key)}")

    @classmethod
    def folders(cls, uri: str) -> list["Store"]:
        """Every key= folder under a store (for maintenance: compaction), each with its key as
        everything prints it (from its ``_key.json``; the folder name spells "+" as "_")."""
        fs, path = storage.resolve(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        out = []
        for i in sorted(infos, key=lambda i: i.path):
            name = os.path.basename(i.path)
            if i.type == pafs.FileType.Directory and name.startswith("key="):
                folder = storage.join(uri, name)
                try:
                    info = json.loads(storage.read_bytes(storage.join(folder, "_key.json")))
                except (FileNotFoundError, ValueError):
                    info = {}
                s = cls(uri, info.get("key") or name[len("key="):], info)
                s.dir = folder
                out.append(s)
        return out

    def ensure(self) -> None:
        path = storage.join(self.dir, "_key.json")
        try:
            storage.read_bytes(path)
        except FileNotFoundError:
            storage.write_bytes(path, json.dumps({**self.info, "key": self.key,
                                                  "created_at": datetime.now(timezone.utc).isoformat()},
                                                 indent=2).encode())

    def other_keys(self) -> list[str]:
        """Folders of other model versions / settings: their entries are not used here."""
        fs, path = storage.resolve(self.uri)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        except (FileNotFoundError, OSError):
            return []
        mine = os.path.basename(self.dir)
        return sorted(os.path.basename(i.path) for i in infos
                      if i.type == pafs.FileType.Directory and os.path.basename(i.path).startswith("key=")
                      and os.path.basename(i.path) != mine)

    # -------------------------------------------------------------- regions

    def region_files(self) -> list[str]:
        return _files(storage.join(self.dir, "regions"))

    def index(self) -> dict[tuple, tuple[str, str]]:
        """(item_id, image_id) → (content_key, the newest part holding it)."""
        out: dict[tuple, tuple[str, str]] = {}
        for f in self.region_files():
            t = _read(f, INDEX_COLUMNS)
            for item, image, ck in zip(*(t.column(c).to_pylist() for c in INDEX_COLUMNS)):
                out[(item, image)] = (ck, f)
        return out

    def entries(self, wanted: dict[tuple, str], batch_rows: int = 512) -> Iterator[dict]:
        """Stream the stored regions of ``wanted`` ((item_id, image_id) → its part, from index())
        as sweep batches, already embedded: kind region / empty, boxes, thumbnails, embeddings,
        OCR text. One part in memory at a time."""
        by_file: dict[str, set] = {}
        for key, f in wanted.items():
            by_file.setdefault(f, set()).add(key)
        for f in sorted(by_file):
            t = _read(f)
            keys = by_file[f]
            mask = [k in keys for k in zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist())]
            t = t.filter(pa.array(mask, pa.bool_()))
            if t.num_rows == 0:
                continue
            # whole images per batch: an image's rows stay together
            ids = list(zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist()))
            cut, start = [], 0
            for i in range(1, len(ids) + 1):
                if i == len(ids) or (i - start >= batch_rows and ids[i] != ids[i - 1]):
                    cut.append((start, i))
                    start = i
            for s, e in cut:
                yield to_batch(t.slice(s, e - s))

    def writer(self, run_id: str, every: int) -> "Writer":
        return Writer(self, run_id, every)

    # -------------------------------------------------------------- flags (what reviewers saw)

    def flags_dir(self, match_version: str) -> str:
        from logoscan.output import safe_name
        return storage.join(self.dir, "flags", f"match={safe_name(match_version)}")

    def write_flags(self, match_version: str, run_id: str, rows: list[dict]) -> None:
        from logoscan.output import safe_name
        t = pa.Table.from_pylist([{**r, "run_id": run_id} for r in rows], schema=STORE_FLAGS)
        storage.write_bytes(storage.join(self.flags_dir(match_version),
                                         f"part-{_stamp()}-{safe_name(run_id)}.parquet"), _parquet(t))

    def add_flags(self, match_version: str, run_id: str, ledger: str) -> None:
        """Move a staged ledger file (STORE_FLAGS, written by a streaming scan) in as one part."""
        from logoscan.output import safe_name
        storage.move_file(ledger, storage.join(self.flags_dir(match_version),
                                               f"part-{_stamp()}-{safe_name(run_id)}.parquet"))

    def read_flags(self, match_version: str, before_run: str | None = None) -> set[tuple]:
        """(item_id, image_id, content_key, region, label) of every region flagged against
        ``match_version``. With ``before_run``: only what was recorded before that run first
        recorded anything (a run repeated under its own id sees what it saw the first time)."""
        out = set()
        for f in self.flag_files(match_version, before_run):
            for r in _read(f).to_pylist():
                out.add((r["item_id"], r["image_id"], r["content_key"], r["region"], r["label"]))
        return out

    def flag_files(self, match_version: str, before_run: str | None = None) -> list[str]:
        """The ledger parts of ``match_version`` (with ``before_run``: as ``read_flags``)."""
        from logoscan.output import safe_name
        files = _files(self.flags_dir(match_version))
        if before_run is not None:
            mine = [i for i, f in enumerate(files) if _run_of(f) == safe_name(before_run)]
            files = files[:mine[0]] if mine else files
        return files

    def previous_match(self, current: str) -> str | None:
        """The match version (gallery + thresholds) this store was last matched against, other
        than ``current``: the one whose newest flags part is newest."""
        fs, path = storage.resolve(storage.join(self.dir, "flags"))
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except (FileNotFoundError, OSError):
            return None
        from logoscan.output import safe_name
        newest: dict[str, str] = {}
        for i in infos:
            if i.type != pafs.FileType.File or not i.path.endswith(".parquet"):
                continue
            folder, name = i.path.rsplit("/", 2)[-2:]
            version = folder[len("match="):]
            newest[version] = max(newest.get(version, ""), name)
        newest.pop(safe_name(current), None)
        return max(newest, key=newest.get) if newest else None

    # -------------------------------------------------------------- compaction

    def compact(self, keep: set[tuple] | None = None, dry_run: bool = False) -> dict:
        """Rewrite this key's region parts as one part holding the newest entry of each image
        (only the images in ``keep``, when given), then delete the parts it replaces. Readers
        running meanwhile see the old parts or the new one, never neither: the new part is
        written (whole) before any old one is deleted. It is named after the newest part it
        replaces, so a part a sweep appends meanwhile (not deleted: not in the listing) still wins.
        ``dry_run``: only count what it would keep and drop."""
        files = self.region_files()
        if not files:
            return {"parts_before": 0, "rows_before": 0, "rows_after": 0, "images_before": 0, "images_after": 0,
                    "images_dropped": 0}
        tables, latest, rows_before, images = [], {}, 0, set()
        for n, f in enumerate(files):
            t = _read(f)
            rows_before += t.num_rows
            tables.append(t)
            for k in zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist()):
                images.add(k)
                if keep is None or k in keep:
                    latest[k] = n
        for n, t in enumerate(tables):
            mask = [latest.get(k) == n for k in zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist())]
            tables[n] = t.filter(pa.array(mask, pa.bool_()))
        merged = pa.concat_tables(tables).cast(STORE_REGIONS)
        report = {"parts_before": len(files), "rows_before": rows_before, "rows_after": merged.num_rows,
                  "images_before": len(images), "images_after": len(latest),
                  "images_dropped": len(images) - len(latest)}
        if dry_run:
            return report
        # named after the newest part it replaces: a part a sweep appends meanwhile sorts after it
        name = f"part-{files[-1].rsplit('/', 1)[-1].split('-')[1]}-compacted.parquet"
        storage.write_bytes(storage.join(self.dir, "regions", name), _parquet(merged))
        for f in files:
            if f.rsplit("/", 1)[-1] != name:
                storage.delete_file(f)
        flag_parts = 0
        fs, path = storage.resolve(storage.join(self.dir, "flags"))
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            for d in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
                parts = _files(storage.join(self.dir, "flags", os.path.basename(d.path)))
                if len(parts) > 1:
                    t = pa.concat_tables([_read(p) for p in parts])
                    t = pa.Table.from_pylist(_dedupe_flags(t.to_pylist()), schema=STORE_FLAGS)
                    storage.write_bytes(storage.join(self.dir, "flags", os.path.basename(d.path),
                                                     f"part-{_stamp()}-compacted.parquet"), _parquet(t))
                    for p in parts:
                        storage.delete_file(p)
                    flag_parts += len(parts)
        return {**report, "flag_parts_merged": flag_parts}


def plan_compaction(uri: str, keep_only: str | None, keep: set[tuple] | None) -> list[tuple["Store", str]]:
    """What ``store compact`` will do to each key folder: (store, "delete" | "compact"). Refuses,
    before anything is touched, a ``keep_only`` that names no folder of this store (it must be
    spelt as scans print it: the summary's ``store.key``) and a ``keep`` manifest that names none
    of the stored images: either would remove everything."""
    folders = Store.folders(uri)
    if not folders:
        raise StoreError(f"no store entries (key=… folders) under {uri}")
    keys = [st.key for st in folders]
    if keep_only is not None and keep_only not in keys:
        from logoscan.output import safe_name  # the folder name spells the key through safe_name
        near = [k for k in keys if keep_only.removeprefix("key=") in (k, safe_name(k))]
        hint = (f"; {keep_only!r} is the folder name of {near[0]!r}: give the key as scans print it "
                "(summary.json store.key)") if near else ""
        raise StoreError(f"--keep-only {keep_only!r} is not a key of the store {uri} (it holds {keys}){hint}. "
                         "Nothing was deleted.")
    if keep is not None and folders:
        stored = set()
        for st in folders:
            for f in st.region_files():
                t = _read(f, ["item_id", "image_id"])
                stored.update(zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist()))
        if stored and not stored & keep:
            raise StoreError(f"the manifest names none of the {len(stored)} stored images (is it this catalog's?): "
                             "refusing to drop them all. Nothing was changed.")
    return [(st, "delete" if keep_only is not None and st.key != keep_only else "compact") for st in folders]


def _run_of(part: str) -> str:
    """The run id in a part's name: part-<UTC time>-<run id>[-<n>].parquet."""
    return part.rsplit("/", 1)[-1][:-len(".parquet")].split("-", 2)[2]


def _dedupe_flags(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        k = (r["item_id"], r["image_id"], r["content_key"], r["region"], r["label"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def to_batch(t: pa.Table) -> dict:
    """Stored regions as a sweep batch (the embed stage's output shape)."""
    n = t.num_rows
    region = np.asarray(t.column("region").to_pylist(), np.int16)
    ids = list(zip(t.column("item_id").to_pylist(), t.column("image_id").to_pylist()))
    per_image: dict[tuple, int] = {}
    for k in ids:
        per_image[k] = per_image.get(k, 0) + 1

    emb = t.column("embedding").to_pylist()
    dim = next((len(e) for e in emb if e), 0)
    return {
        "item_id": _obj(t.column("item_id").to_pylist()), "image_id": _obj(t.column("image_id").to_pylist()),
        "image_uri": _obj(t.column("image_uri").to_pylist()),
        "kind": _obj(["region" if r >= 0 else "empty" for r in region]),
        "rows_of_image": np.asarray([per_image[k] for k in ids], np.int32),
        "region": region,
        "box": np.asarray([b or (0, 0, 0, 0) for b in t.column("box").to_pylist()], np.float32).reshape(n, 4),
        "det_score": np.asarray(t.column("det_score").to_pylist(), np.float32),
        "thumbnail_jpeg": _obj([v or b"" for v in t.column("thumbnail_jpeg").to_pylist()]),
        "embedding": np.asarray([e if e else [0.0] * dim for e in emb], np.float32).reshape(n, dim),
        "ocr_text": _obj([v or "" for v in t.column("ocr_text").to_pylist()]),
        **{k: _obj([""] * n) for k in ERR},
    }


def write_region_part(store: Store, run_id: str, staged: list[pa.Table]) -> int:
    """One region part from a streaming scan's staged rows (schema.STAGED) of whole, scanned
    images with a content key; returns the number of images written."""
    from logoscan.output import safe_name
    t = pa.concat_tables(staged)
    n = t.num_rows
    is_region = pc.equal(t.column("kind"), "region")

    def of_region(name: str):  # an image without regions: one row, region -1, nothing else
        return pc.if_else(is_region, t.column(name), pa.scalar(None, STORE_REGIONS.field(name).type))
    part = pa.table({
        "item_id": t.column("item_id"), "image_id": t.column("image_id"), "image_uri": t.column("image_uri"),
        "content_key": t.column("content_key"), "region": of_region("region").fill_null(-1),
        **{k: of_region(k) for k in ("box", "det_score", "embedding", "ocr_text", "thumbnail_jpeg")},
        "run_id": pa.array([run_id] * n, pa.string()),
        "stored_at": pa.array([datetime.now(timezone.utc)] * n, STORE_REGIONS.field("stored_at").type)},
        schema=STORE_REGIONS)
    store.ensure()
    name = f"part-{_stamp()}-{safe_name(run_id)}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_bytes(storage.join(store.dir, "regions", name), _parquet(part))
    return pc.count_distinct(t.column("ordinal")).as_py()


class Writer:
    """Appends a run's newly scanned images. ``capture`` takes the embedded batches (before
    matching drops the embeddings); ``finish`` is told when an image's every row is back; finished,
    scanned images are written every ``every`` images as one part (whole or nothing)."""

    def __init__(self, store: Store, run_id: str, every: int):
        self.store, self.run_id, self.every = store, run_id, max(1, every)
        self.content: dict[tuple, str | None] = {}
        self.pending: dict[tuple, list[dict]] = {}
        self.ready: list[dict] = []
        self.images_written = self.parts = 0

    def capture(self, b: dict) -> None:
        kinds = b["kind"]
        for i in range(len(kinds)):
            if kinds[i] == "error":
                continue
            key = (b["item_id"][i], b["image_id"][i])
            if self.content.get(key) is None:  # not stat'ed: cannot be recognised next time
                continue
            region = kinds[i] == "region"
            self.pending.setdefault(key, []).append({
                "item_id": key[0], "image_id": key[1], "image_uri": b["image_uri"][i],
                "content_key": self.content[key], "region": int(b["region"][i]) if region else -1,
                "box": [float(v) for v in b["box"][i]] if region else None,
                "det_score": float(b["det_score"][i]) if region else None,
                "embedding": b["embedding"][i].astype(np.float32).tolist() if region else None,
                "ocr_text": (b["ocr_text"][i] or None) if region and "ocr_text" in b else None,
                "thumbnail_jpeg": b["thumbnail_jpeg"][i] if region else None})

    def finish(self, key: tuple, status: str) -> None:
        rows = self.pending.pop(key, None)
        if rows and status == "scanned":
            self.ready.append(rows)
            if len(self.ready) >= self.every:
                self.flush()

    def flush(self) -> None:
        if not self.ready:
            return
        now = datetime.now(timezone.utc)
        rows = [{**r, "run_id": self.run_id, "stored_at": now} for img in self.ready for r in img]
        from logoscan.output import safe_name
        self.store.ensure()
        name = f"part-{_stamp()}-{safe_name(self.run_id)}-{self.parts:05d}.parquet"
        storage.write_bytes(storage.join(self.store.dir, "regions", name),
                            _parquet(pa.Table.from_pylist(rows, schema=STORE_REGIONS)))
        self.images_written += len(self.ready)
        self.parts += 1
        self.ready = []

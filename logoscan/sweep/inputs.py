"""What a run reads: the manifest (validated per file before any work), the rows it cannot scan
(no item_id, duplicates), and where images may be read from."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logoscan import storage
from logoscan.config import ScanConfig
from logoscan.schema import SchemaError, parquet_files, validate_manifest
from logoscan.stages import KEYS


def read_manifest(uri: str, extra_columns: tuple = ()) -> pa.Table:
    """A Parquet file, a folder of them, or an s3:// prefix; validated per file before any work."""
    tables = []
    stray = storage.other_files(uri, ".parquet")
    if stray:
        raise SchemaError(f"the manifest folder {uri} holds {len(stray)} file(s) that are not .parquet "
                          f"(e.g. {stray[:3]}): their rows would be scanned nowhere. Convert them to Parquet or "
                          "move them out (names starting with '_' or '.' are skipped)")
    for f in parquet_files(uri, "manifest"):
        fs, path = storage.resolve(f)
        try:
            names = pq.read_schema(fs.open_input_file(path)).names
            wanted = ["item_id", "image_uri", "image_id", "image_fingerprint", *extra_columns]
            t = pq.read_table(path, filesystem=fs, columns=[c for c in wanted if c in names])
        except Exception as e:
            raise SchemaError(f"{f}: not a readable Parquet file ({e})") from e
        t = validate_manifest(t, f)
        missing = [c for c in extra_columns if c not in t.column_names]
        if missing:
            raise SchemaError(f"{f}: carry_columns {missing} are not in the manifest")
        if "image_fingerprint" not in t.column_names:
            t = t.append_column("image_fingerprint", pa.nulls(t.num_rows, pa.string()))
        tables.append(t.select(["item_id", "image_id", "image_uri", "image_fingerprint",
                                *[c for c in extra_columns if c != "image_fingerprint"]]))
    return pa.concat_tables(tables, promote_options="default")


def split_unidentified(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows without an item_id (null, empty or blank) cannot be acted on by a reviewer: they are
    not scanned, each becomes an error row (stage manifest)."""
    ids = table.column("item_id")
    ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), False)
    return table.filter(ok), table.filter(pc.invert(ok))


def split_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows repeating an earlier (item_id, image_id) are not scanned twice: they become error rows."""
    seen, keep = set(), []
    for i, key in enumerate(zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist())):
        keep.append(key not in seen)
        seen.add(key)
    mask = pa.array(keep, pa.bool_())
    return table.filter(mask), table.filter(pc.invert(mask))


def without(table: pa.Table, keys: set) -> pa.Table:
    if not keys:
        return table
    mask = [k not in keys for k in zip(table.column("item_id").to_pylist(), table.column("image_id").to_pylist())]
    return table.filter(pa.array(mask, pa.bool_()))


def allowed_roots(cfg: ScanConfig) -> tuple:
    """Where images may be read from: ``fetch.allowed_roots``, or by default the local manifest's
    own folder (and any s3:// URI) — a manifest row cannot make the sweep read /etc/passwd."""
    def local(p: str) -> str:  # symlinks and ".." resolved once here, not per image
        return os.path.realpath(storage.resolve(p)[1])
    if cfg.fetch.allowed_roots:
        return tuple(r if storage.is_s3(r) else local(r) for r in cfg.fetch.allowed_roots)
    if storage.is_s3(cfg.manifest):
        return ()
    m = local(cfg.manifest)
    return (m if os.path.isdir(m) else os.path.dirname(m),)


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (a manifest file is no folder: nothing is inside it)."""
    if storage.is_s3(path) != storage.is_s3(folder) or folder.endswith(".parquet"):
        return False
    a, b = path.rstrip("/") + "/", folder.rstrip("/") + "/"
    if not storage.is_s3(folder):
        a, b = os.path.realpath(a) + "/", os.path.realpath(b) + "/"
    return a.startswith(b)


def manifest_errors(table: pa.Table, error_type: str, message: str) -> list[dict]:
    """Error rows (stage manifest) for rows that are not scanned."""
    return [{**{k: row[k] for k in KEYS}, "stage": "manifest", "error_type": error_type, "message": message}
            for row in table.select(list(KEYS)).to_pylist()]

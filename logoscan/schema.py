"""The contracts users and their tools depend on, as Arrow schemas, validated at the edges.

Manifest (input) · References (gallery input) · Flagged items (review queues) · Errors ·
Embedding store (regions, flag ledger) · Run summary (JSON keys). See README.md "Contracts" for
the prose version.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

BOX = pa.list_(pa.float32(), 4)  # x1, y1, x2, y2 in original-image pixels

MANIFEST_REQUIRED = pa.schema([("item_id", pa.string()), ("image_uri", pa.string())])
# image_fingerprint: any string that changes when the image's bytes do (an S3 inventory's ETag, a
# hash); incremental sweeps trust it instead of a stat / HEAD per image
MANIFEST_OPTIONAL = pa.schema([("image_id", pa.string()), ("image_fingerprint", pa.string())])

REFERENCES_REQUIRED = pa.schema([("logo_id", pa.string()), ("label", pa.string()),
                                 ("category", pa.string()), ("image_uri", pa.string())])
REFERENCES_OPTIONAL = pa.schema([("text", pa.string()), ("box", BOX)])

# Labelled crops for `logoscan calibrate`: each image is one region (or ``box`` of it); ``label``
# is a gallery label, or null/'' for a crop that must not be flagged (unknown logo, look-alike,
# no logo). ``kind`` is a free tag the report groups by; ``ocr_text`` skips reading the crop;
# ``det_score`` (the detector's score of a detected box) lets the evidence model use that score.
LABELLED_CROPS_REQUIRED = pa.schema([("image_uri", pa.string()), ("label", pa.string())])
LABELLED_CROPS_OPTIONAL = pa.schema([("box", BOX), ("kind", pa.string()), ("ocr_text", pa.string()),
                                     ("det_score", pa.float32())])

# Reviewer decisions (`logoscan gallery ingest`): one row per flagged (item, matched reference)
# a reviewer decided on. confirm: the crop becomes a gallery exemplar of that reference's class;
# reject: it becomes an impostor crop for the next `logoscan calibrate`.
DECISIONS_REQUIRED = pa.schema([("item_id", pa.string()), ("logo_id", pa.string()), ("decision", pa.string()),
                                ("reviewer", pa.string()), ("decided_at", pa.timestamp("us", tz="UTC"))])
DECISIONS_OPTIONAL = pa.schema([("image_id", pa.string()), ("run_id", pa.string()), ("note", pa.string())])
# undo: the reviewer took their decision back (the review app's u); the newest decision per (item,
# image, reference) wins, so an undo leaves that card undecided and ingest skips it
DECISION_VALUES = ("confirm", "reject", "undo")

# A truth table for `logoscan evaluate`: the label each item should be flagged with (null/'' for
# none), optionally its category
TRUTH_REQUIRED = pa.schema([("item_id", pa.string()), ("label", pa.string())])
TRUTH_OPTIONAL = pa.schema([("category", pa.string())])

FLAGGED = pa.schema([
    ("run_id", pa.string()), ("item_id", pa.string()), ("image_id", pa.string()),
    ("image_uri", pa.string()), ("box", BOX), ("det_score", pa.float32()),
    ("label", pa.string()), ("category", pa.string()), ("logo_id", pa.string()),
    ("distance", pa.float32()), ("threshold", pa.float32()), ("threshold_source", pa.string()),
    ("runner_up_label", pa.string()), ("runner_up_distance", pa.float32()), ("margin", pa.float32()),
    ("evidence_score", pa.float32()), ("evidence", pa.string()),
    ("ocr_text", pa.string()), ("model_version", pa.string()), ("gallery_version", pa.string()),
    ("scanned_at", pa.timestamp("us", tz="UTC")), ("thumbnail_jpeg", pa.binary()),
])

# The embedding store (logoscan/store.py, docs/incremental.md): one row per detected region of a
# scanned image (region = -1: an image without any), appended by every scan; and the ledger of
# regions flagged against a gallery version (what `rematch` compares with)
STORE_REGIONS = pa.schema([
    ("item_id", pa.string()), ("image_id", pa.string()), ("image_uri", pa.string()),
    ("content_key", pa.string()), ("region", pa.int16()), ("box", BOX), ("det_score", pa.float32()),
    ("embedding", pa.list_(pa.float32())), ("ocr_text", pa.string()), ("thumbnail_jpeg", pa.binary()),
    ("run_id", pa.string()), ("stored_at", pa.timestamp("us", tz="UTC")),
])
# The one list of a flagged region's fields: the review queue's columns (FLAGGED) but those every
# row of a run shares, plus where it goes (queue) and which region of its image it is (region, for
# the store's flag ledger)
FLAG_RUN_FIELDS = ("run_id", "model_version", "gallery_version", "scanned_at")
FLAG_FIELDS = tuple(n for n in FLAGGED.names if n not in FLAG_RUN_FIELDS) + ("region", "queue")

STORE_FLAGS = pa.schema([
    ("item_id", pa.string()), ("image_id", pa.string()), ("content_key", pa.string()),
    ("region", pa.int16()), ("label", pa.string()), ("logo_id", pa.string()), ("distance", pa.float32()),
    ("run_id", pa.string()),
])

ERRORS = pa.schema([
    ("run_id", pa.string()), ("item_id", pa.string()), ("image_id", pa.string()),
    ("image_uri", pa.string()), ("stage", pa.string()), ("error_type", pa.string()),
    ("message", pa.string()), ("scanned_at", pa.timestamp("us", tz="UTC")),
])

# A streaming scan's rows as its workers write them, a part per block, to the run's checkpoint
# folder (logoscan.sweep.stream): one row per region, per image without any (kind "empty") and per
# image that failed or was not scanned (kind "error"), decided; the driver publishes from these.
# ``ordinal`` is the row's place in the manifest (file << 40 | row): what a resumed run skips;
# ``plan`` an incremental scan's plan for the image (new, changed, unknown, reused); ``shown`` a
# rematch's flag that reviewers were shown before (kept for the store's ledger, not queued).
# Carried manifest columns follow as "carry.<name>" with their manifest types.
STAGED = pa.schema([
    ("item_id", pa.string()), ("image_id", pa.string()), ("image_uri", pa.string()), ("ordinal", pa.int64()),
    ("content_key", pa.string()), ("plan", pa.string()), ("kind", pa.string()), ("rows_of_image", pa.int32()), ("region", pa.int16()),
    ("box", BOX), ("det_score", pa.float32()), ("thumbnail_jpeg", pa.binary()), ("ocr_text", pa.string()),
    ("embedding", pa.list_(pa.float32())),
    ("label", pa.string()), ("category", pa.string()), ("logo_id", pa.string()), ("distance", pa.float32()),
    ("threshold", pa.float32()), ("threshold_source", pa.string()), ("runner_up_label", pa.string()),
    ("runner_up_distance", pa.float32()), ("margin", pa.float32()), ("evidence_score", pa.float32()),
    ("evidence", pa.string()), ("queue", pa.string()), ("flagged", pa.bool_()), ("shown", pa.bool_()),
    ("error_stage", pa.string()), ("error_type", pa.string()), ("error_message", pa.string()),
])

# Keys of summary.json (scan and rematch; built by logoscan.sweep.publish.summary)
RUN_SUMMARY_KEYS = ("run_id", "run_date", "started_at", "finished_at", "seconds", "rows_in",
                    "rows_scanned", "rows_reused", "rows_errored", "regions", "flagged", "flagged_by_queue",
                    "errors_by_stage", "versions", "outputs", "config")


class SchemaError(ValueError):
    """Input that does not meet a contract. The message names the source, column and expectation."""


def _check(table: pa.Table, source: str, required: pa.Schema, optional: pa.Schema, what: str,
           ) -> pa.Table:
    names = set(table.column_names)
    missing = [f.name for f in required if f.name not in names]
    if missing:
        raise SchemaError(f"{source}: {what} is missing required column(s) {missing}; "
                          f"expected {', '.join(f'{f.name}: {f.type}' for f in required)}")
    for f in list(required) + [f for f in optional if f.name in names]:
        col = table.column(f.name)
        if col.type == f.type:
            continue
        if f.type == pa.string() and pa.types.is_large_string(col.type) or (
                f.type == pa.string() and pa.types.is_dictionary(col.type)
                and pa.types.is_string(col.type.value_type)):
            table = table.set_column(table.schema.get_field_index(f.name), f.name, col.cast(pa.string()))
            continue
        if f.type == BOX and pa.types.is_list(col.type) and pa.types.is_floating(col.type.value_type) \
                or f.type == BOX and pa.types.is_fixed_size_list(col.type):
            table = table.set_column(table.schema.get_field_index(f.name), f.name, col.cast(BOX))
            continue
        raise SchemaError(f"{source}: column {f.name!r} has type {col.type}, expected {f.type}")
    return table


def validate_manifest(table: pa.Table, source: str) -> pa.Table:
    """Check types; ``image_id`` defaults to ``image_uri`` (one product may have many images)."""
    table = _check(table, source, MANIFEST_REQUIRED, MANIFEST_OPTIONAL, "manifest")
    if "image_id" not in table.column_names:
        table = table.append_column("image_id", table.column("image_uri"))
    else:
        table = table.set_column(table.schema.get_field_index("image_id"), "image_id",
                                 pc.coalesce(table.column("image_id"), table.column("image_uri")))
    return table


def validate_references(table: pa.Table, source: str) -> pa.Table:
    table = _check(table, source, REFERENCES_REQUIRED, REFERENCES_OPTIONAL, "references")
    for name in ("logo_id", "label", "category", "image_uri"):
        nulls = table.column(name).null_count
        if nulls:
            raise SchemaError(f"{source}: column {name!r} has {nulls} null value(s); every reference needs one")
    from logoscan.output import queue_collisions
    clash = queue_collisions(set(table.column("category").to_pylist()))
    if clash:
        raise SchemaError(f"{source}: categories {clash} would share one review-queue file (queue=<name> keeps "
                          "letters, digits, '.', '-', '_'): rename one of them")
    ids = table.column("logo_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
        raise SchemaError(f"{source}: column 'logo_id' must be unique; duplicated: {dup}")
    return table



def validate_labelled_crops(table: pa.Table, source: str) -> pa.Table:
    table = _check(table, source, LABELLED_CROPS_REQUIRED, LABELLED_CROPS_OPTIONAL, "labelled crops")
    nulls = table.column("image_uri").null_count
    if nulls:
        raise SchemaError(f"{source}: column 'image_uri' has {nulls} null value(s)")
    if table.num_rows == 0:
        raise SchemaError(f"{source}: no labelled crops")
    return table


def validate_truth(table: pa.Table, source: str) -> pa.Table:
    table = _check(table, source, TRUTH_REQUIRED, TRUTH_OPTIONAL, "truth table")
    if table.column("item_id").null_count:
        raise SchemaError(f"{source}: column 'item_id' has {table.column('item_id').null_count} null value(s)")
    return table


def validate_decisions(table: pa.Table, source: str) -> pa.Table:
    names = set(table.column_names)
    if "decided_at" in names and pa.types.is_timestamp(table.column("decided_at").type):
        table = table.set_column(table.schema.get_field_index("decided_at"), "decided_at",
                                 table.column("decided_at").cast(pa.timestamp("us", tz="UTC")))
    table = _check(table, source, DECISIONS_REQUIRED, DECISIONS_OPTIONAL, "decisions")
    for name in ("item_id", "logo_id", "decision", "reviewer"):
        nulls = table.column(name).null_count
        if nulls:
            raise SchemaError(f"{source}: column {name!r} has {nulls} null value(s); every decision needs one")
    bad = sorted(set(table.column("decision").to_pylist()) - set(DECISION_VALUES))
    if bad:
        raise SchemaError(f"{source}: column 'decision' must be one of {list(DECISION_VALUES)}, found {bad[:5]}")
    return table


def parquet_files(uri: str, what: str) -> list[str]:
    """The .parquet files at a file, folder or s3:// prefix; a SchemaError naming ``what`` if none."""
    from logoscan import storage
    try:
        files = storage.list_files(uri, ".parquet")
    except FileNotFoundError as e:
        raise SchemaError(f"{what} not found: {uri}") from e
    if not files:
        raise SchemaError(f"no .parquet files under {what} location {uri}")
    return files


def read_validated(uri: str, what: str, validate) -> pa.Table:
    """Every .parquet file at ``uri``, each checked by ``validate(table, file)``, as one table."""
    import pyarrow.parquet as pq

    from logoscan import storage
    tables = []
    for f in parquet_files(uri, what):
        fs, path = storage.resolve(f)
        try:
            t = pq.read_table(path, filesystem=fs)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise SchemaError(f"{f}: not a readable Parquet file ({' '.join(str(e).split())[:300]})") from None
        tables.append(validate(t, f))
    return pa.concat_tables(tables, promote_options="default")

"""What reviewers tell the gallery: new logos, confirmed and rejected flags.

``add_logo``: a new reference (an image, a label, a category) is appended to the references;
``gallery build`` then makes a new gallery version and the next sweep finds the logo — nothing
is retrained (the embedder is zero-shot by design).

``ingest``: a decisions Parquet (schema.DECISIONS_*: item_id, logo_id, decision, reviewer,
decided_at) is joined with the run's flagged rows on (item_id, logo_id[, image_id]).
- confirm: the region (cut from the original image at its box, or the reviewer thumbnail when the
  original is gone) becomes a new reference of the matched class: more exemplars per class.
- reject: the region becomes a labelled crop with an empty label (an impostor: it must not be
  flagged) in the calibration crops, so the next ``logoscan calibrate`` tightens the threshold
  that let it through.
Both are written as new Parquet parts beside the existing ones, with their pictures as PNG files;
ids are derived from (item, image, region, reference), so ingesting the same decisions twice adds
nothing twice.
"""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from logoscan import output, storage
from logoscan.images import decode
from logoscan.log import get_logger
from logoscan.schema import read_validated, validate_decisions, validate_references

log = get_logger(__name__)


class FeedbackError(ValueError):
    pass


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _is_file(uri: str) -> bool:
    fs, p = storage.resolve(uri)
    return fs.get_file_info(p).type == pafs.FileType.File


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def append_parts(where: str, table: pa.Table, prefix: str) -> str:
    """Add ``table`` to a Parquet dataset: a new part in a folder, or the file rewritten whole."""
    if _is_file(where):
        fs, p = storage.resolve(where)
        old = pq.read_table(p, filesystem=fs)
        table = pa.concat_tables([old, table], promote_options="default")
        storage.write_bytes(where, _parquet(table))
        return where
    part = storage.join(where, f"{prefix}-{_stamp()}.parquet")
    storage.write_bytes(part, _parquet(table))
    return part


def _folder(where: str) -> str:
    return where.rsplit("/", 1)[0] if _is_file(where) else where


def existing_ids(where: str, column: str = "logo_id") -> set[str]:
    """The values of ``column`` in the Parquet dataset at ``where`` (none if it or the column is absent)."""
    try:
        files = storage.list_files(where, ".parquet")
    except FileNotFoundError:
        return set()
    ids = set()
    for f in files:
        fs, p = storage.resolve(f)
        if column in pq.read_schema(p, filesystem=fs).names:
            ids.update(pq.read_table(p, filesystem=fs, columns=[column]).column(column).to_pylist())
    return ids


def add_logo(refs: str, image_uri: str, label: str, category: str, text: str | None = None,
             logo_id: str | None = None, box: tuple[float, float, float, float] | None = None) -> dict:
    """Append one reference (its picture copied beside the references) and return its row. Its
    ``image_uri`` is stored absolute, so the references read the same from any directory. With
    ``box`` (x1, y1, x2, y2 in the picture's pixels) only that region is stored: a photo of the mark
    in the wild, e.g. a badge on a car, beside the clean logo under the same ``label``."""
    refs = storage.absolute(refs)
    data = storage.read_bytes(image_uri)
    try:
        im = Image.fromarray(decode(data, 50_000_000))
    except Exception as e:  # noqa: BLE001
        raise FeedbackError(f"{image_uri}: not a readable image ({e})") from e
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0 <= x1 < x2 <= im.width and 0 <= y1 < y2 <= im.height):
            raise FeedbackError(f"box {x1:g},{y1:g},{x2:g},{y2:g} is not inside {image_uri} "
                                f"({im.width}x{im.height}): x1 < x2, y1 < y2, in pixels")
        im = _crop(im, (x1, y1, x2, y2))
        data = data + repr(box).encode()  # another region of the same photo is another reference
    logo_id = logo_id or f"{label}-{hashlib.sha1(data).hexdigest()[:10]}"
    if logo_id in existing_ids(refs):
        raise FeedbackError(f"logo_id {logo_id!r} is already in the references at {refs}")
    dest = storage.join(_folder(refs), "images", f"{output.safe_name(logo_id)}.png")
    storage.write_bytes(dest, _png(im))
    row = {"logo_id": logo_id, "label": label, "category": category, "image_uri": dest, "text": text or ""}
    table = validate_references(pa.Table.from_pylist([row]), "the new logo")
    part = append_parts(refs, table, "added")
    log.info("gallery.logo_added", logo_id=logo_id, label=label, category=category, references=part)
    return row


def read_decisions(uri: str) -> pa.Table:
    return read_validated(uri, "decisions", validate_decisions)


def _crop(im: Image.Image, box) -> Image.Image:
    """The pixels of ``box`` (x1, y1, x2, y2): a region as the reviewer saw it, or as `gallery add --box` stores it."""
    x1, y1, x2, y2 = box
    return im.crop((int(x1), int(y1), int(round(x2)), int(round(y2))))


def _region_picture(row: dict) -> Image.Image:
    """The flagged region from the original image; the reviewer thumbnail if that is gone."""
    try:
        im = Image.fromarray(decode(storage.read_bytes(row["image_uri"]), 50_000_000))
        return _crop(im, row["box"])
    except Exception as e:  # noqa: BLE001 - the catalog moves on; the thumbnail stays with the queue
        log.warning("feedback.original_unreadable", image_uri=row["image_uri"], error=str(e)[:200],
                    note="using the queue's thumbnail")
        return Image.open(io.BytesIO(row["thumbnail_jpeg"]))


def ingest(decisions_uri: str, run: str, refs: str, crops: str, run_id: str | None = None) -> dict:
    """Confirmed regions → new references in ``refs``; rejected → impostor crops in ``crops``
    (pictures written beside them, their ``image_uri`` stored absolute)."""
    refs, crops = storage.absolute(refs), storage.absolute(crops)
    decisions = read_decisions(decisions_uri)
    if run_id is None and "run_id" in decisions.column_names:
        named = {r for r in decisions.column("run_id").to_pylist() if r}
        if len(named) == 1:  # the decisions say which run they are about
            run_id = named.pop()
    summary_uri = output.find_summary(run, run_id, prefer_flagged=True)
    summary = json.loads(storage.read_bytes(summary_uri))
    queues = output.read_queues(summary)
    if not queues:
        raise FeedbackError(f"run {summary['run_id']} flagged nothing: no decision can refer to it")
    flagged = pa.concat_tables(list(queues.values()), promote_options="default").to_pylist()
    if "run_id" in decisions.column_names:
        other = pc.filter(decisions, pc.and_(pc.is_valid(decisions["run_id"]),
                                             pc.not_equal(decisions["run_id"], summary["run_id"])))
        if other.num_rows:
            raise FeedbackError(f"{other.num_rows} decision(s) name another run than {summary['run_id']} "
                                f"(e.g. {other.column('run_id')[0].as_py()!r}): ingest them with that run")
    by_key = {}
    for r in flagged:
        by_key.setdefault((r["item_id"], r["logo_id"]), []).append(r)
    # the newest decision per (item, logo[, image]) wins: a reviewer may change their mind
    latest = {}
    for d in sorted(decisions.to_pylist(), key=lambda d: d["decided_at"]):
        latest[(d["item_id"], d["logo_id"], d.get("image_id"))] = d
    known_refs, known_crops = existing_ids(refs), existing_ids(crops, "crop_id")
    new_refs, new_crops, unmatched, skipped = [], [], [], 0
    undone = {k for k, d in latest.items() if d["decision"] == "undo"}
    latest = {k: d for k, d in latest.items() if k not in undone}
    for (item, logo, image), d in latest.items():
        rows = [r for r in by_key.get((item, logo), []) if image is None or r["image_id"] == image]
        if not rows:
            unmatched.append({"item_id": item, "logo_id": logo})
            continue
        for r in rows:
            rid = hashlib.sha1(repr((r["item_id"], r["image_id"], tuple(r["box"]), logo)).encode()).hexdigest()[:12]
            confirm = d["decision"] == "confirm"
            new_id = f"{r['label']}~confirmed~{rid}" if confirm else f"rejected~{rid}"
            if new_id in (known_refs if confirm else known_crops):
                skipped += 1
                continue
            dest = storage.join(_folder(refs if confirm else crops), "images", f"{output.safe_name(new_id)}.png")
            storage.write_bytes(dest, _png(_region_picture(r)))
            if confirm:
                new_refs.append({"logo_id": new_id, "label": r["label"], "category": r["category"],
                                 "image_uri": dest, "text": r.get("ocr_text") or ""})
            else:
                new_crops.append({"image_uri": dest, "label": "", "kind": "rejected",
                                  "ocr_text": r.get("ocr_text") or "", "crop_id": new_id,
                                  "rejected_label": r["label"], "reviewer": d["reviewer"]})
    if unmatched:
        log.warning("feedback.unmatched", count=len(unmatched), examples=unmatched[:5], run_id=summary["run_id"],
                    note="no flagged row of this run has that (item_id, logo_id)")
    if latest and len(unmatched) == len(latest):
        raise FeedbackError(f"none of the {len(latest)} decision(s) matches a flagged row of run "
                            f"{summary['run_id']} (joined on item_id, logo_id): wrong run?")
    written = {}
    if new_refs:
        written["references"] = append_parts(refs, validate_references(pa.Table.from_pylist(new_refs), "confirmed"),
                                             "confirmed")
    if new_crops:
        written["calibration_crops"] = append_parts(crops, pa.Table.from_pylist(new_crops), "rejected")
    result = {"run_id": summary["run_id"], "decisions": len(latest), "undone": len(undone), "confirmed_exemplars": len(new_refs),
              "impostor_crops": len(new_crops), "unmatched": len(unmatched), "already_ingested": skipped,
              "written": written}
    log.info("feedback.ingested", **result)
    return result

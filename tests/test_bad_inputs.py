"""Every kind of bad input in one manifest, through the real sweep: each row ends scanned or as
one error row with the expected stage and type; the odd-but-valid images are read correctly (the
planted logo is still found); nothing outside the allowed roots is ever read."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from logoscan.config import RayConfig, ScanConfig
from logoscan.sweep import run_scan


def _save(im: Image.Image, path: Path, fmt: str, **kw) -> str:
    im.save(path, fmt, **kw)
    return str(path)


@pytest.fixture(scope="module")
def bad(sample, s3_endpoint, tmp_path_factory):
    """(manifest, expected outcome per item_id, the label planted in the source image)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    cat = root / "catalog"
    cat.mkdir()
    truth = [r for r in pq.read_table(sample["truth"]).to_pylist() if r["label"]]
    src_item = truth[0]["item_id"]
    label = {r["label"] for r in truth if r["item_id"] == src_item}
    src = next(r["image_uri"] for r in pq.read_table(sample["manifest"]).to_pylist() if r["item_id"] == src_item)
    im = Image.open(src).convert("RGB")
    rows, expect = [], {}

    def add(item, uri, outcome):
        rows.append({"item_id": item, "image_uri": uri})
        expect[item] = outcome

    # degenerate shapes in the same detector batch as a good image: each is its own outcome, and the
    # good image's flag is not lost (a 1 x 50000 PNG used to fail the whole batch)
    add("thin-1x50000", _save(Image.new("RGB", (50000, 1), "white"), cat / "thin.png", "PNG"), "scanned")
    add("tall-50000x1", _save(Image.new("RGB", (1, 50000), "white"), cat / "tall.png", "PNG"), "scanned")
    # odd but valid: scanned, and the planted logo still found where colours survive
    add("ok-plain", _save(im, cat / "plain.jpg", "JPEG", quality=90), "flag")
    add("cmyk", _save(im.convert("CMYK"), cat / "cmyk.jpg", "JPEG", quality=90), "flag")
    add("palette", _save(im.convert("P", palette=Image.ADAPTIVE), cat / "palette.png", "PNG"), "flag")
    rgba = im.convert("RGBA")
    add("alpha", _save(rgba, cat / "alpha.png", "PNG"), "flag")
    add("grayscale", _save(im.convert("L"), cat / "gray.png", "PNG"), "scanned")
    add("16-bit", _save(im.convert("L").convert("I;16"), cat / "gray16.png", "PNG"), "scanned")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned; displayed upright after a 90° turn
    add("exif-rotated", _save(im.transpose(Image.Transpose.ROTATE_270), cat / "exif.jpg", "JPEG", exif=exif,
                              quality=90), "flag")
    frames = [im, Image.new("RGB", im.size, "white")]
    add("animated-gif", _save(frames[0], cat / "anim.gif", "GIF", save_all=True, append_images=frames[1:]), "flag")
    add("animated-webp", _save(frames[0], cat / "anim.webp", "WEBP", save_all=True, append_images=frames[1:],
                               quality=90), "flag")
    add("1x1", _save(Image.new("RGB", (1, 1), "red"), cat / "one.png", "PNG"), "scanned")
    big = im.resize((6000, 6000))  # 36 MP: within the 50 MP limit
    add("huge-within-limits", _save(big, cat / "big.jpg", "JPEG", quality=80), "flag")
    # broken or not images: decode errors
    (cat / "zero.jpg").write_bytes(b"")
    add("zero-byte", str(cat / "zero.jpg"), ("decode", "ImageRejected"))
    data = Path(cat / "plain.jpg").read_bytes()
    (cat / "trunc.jpg").write_bytes(data[: len(data) // 3])
    add("truncated-jpeg", str(cat / "trunc.jpg"), ("decode", "ImageRejected"))
    (cat / "page.jpg").write_bytes(b"<!doctype html><html><body>404</body></html>")
    add("html", str(cat / "page.jpg"), ("decode", "ImageRejected"))
    (cat / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    add("pdf", str(cat / "doc.pdf"), ("decode", "ImageRejected"))
    (cat / "notes.txt").write_bytes(b"just some text\n")
    add("text", str(cat / "notes.txt"), ("decode", "ImageRejected"))
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    (cat / "bomb.png").write_bytes(buf.getvalue())
    add("decompression-bomb", str(cat / "bomb.png"), ("decode", "ImageRejected"))
    # missing objects
    add("missing-local", str(cat / "nope.jpg"), ("fetch", "NotFound"))
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="bad-inputs")
    s3.upload_file(str(cat / "plain.jpg"), "bad-inputs", "img/plain.jpg")
    add("s3-ok", "s3://bad-inputs/img/plain.jpg", "flag")
    add("missing-s3", "s3://bad-inputs/img/nope.jpg", ("fetch", "NotFound"))
    # never fetched: unsupported schemes, paths outside the allowed roots
    add("metadata-endpoint", "http://169.254.169.254/latest/meta-data/iam", ("fetch", "UnsupportedURI"))
    add("ftp", "ftp://example.com/logo.jpg", ("fetch", "UnsupportedURI"))
    add("traversal", str(cat) + "/../../../../../../etc/passwd", ("fetch", "PermissionError"))
    add("relative-traversal", "../../etc/passwd", ("fetch", "PermissionError"))
    add("absolute-outside", "/etc/hostname", ("fetch", "PermissionError"))
    add("file-uri-outside", "file:///etc/passwd", ("fetch", "PermissionError"))
    os.symlink("/etc/passwd", cat / "link.jpg")
    add("symlink-outside", str(cat / "link.jpg"), ("fetch", "PermissionError"))
    # empty manifest cells and repeated rows
    add("null-uri", None, ("fetch", "ValueError"))
    add("empty-uri", "", ("fetch", "ValueError"))
    rows.append({"item_id": "ok-plain", "image_uri": str(cat / "plain.jpg")})  # the same row again
    # no item_id: a reviewer could not act on it; an error row each, never published as a flag
    rows.append({"item_id": None, "image_uri": str(cat / "plain.jpg")})
    rows.append({"item_id": " ", "image_uri": str(cat / "cmyk.jpg")})
    manifest = cat / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("item_id", pa.string()),
                                                                ("image_uri", pa.string())])), manifest)
    return str(manifest), expect, label


def test_every_bad_input_ends_as_exactly_one_expected_row(sample, bad, tmp_path):
    manifest, expect, label = bad
    s = run_scan(ScanConfig(manifest=manifest, milvus_uri=sample["milvus"], collection="logos",
                            out=str(tmp_path), run_id="bad", engine="local", ray=RayConfig(fetch_batch=4)))
    assert s["rows_in"] == len(expect) + 3 == s["rows_scanned"] + s["rows_errored"]
    errors = pq.read_table(s["outputs"]["errors"]).to_pylist()
    unidentified = [e for e in errors if e["error_type"] == "MissingItemId"]
    assert [(e["item_id"], e["stage"]) for e in unidentified] == [(None, "manifest"), (" ", "manifest")]
    errors = [e for e in errors if e["error_type"] != "MissingItemId"]
    got = {}
    for e in errors:
        assert e["item_id"] not in got or e["error_type"] == "DuplicateRow", e
        if e["error_type"] != "DuplicateRow":
            got[e["item_id"]] = (e["stage"], e["error_type"])
    dup = [e for e in errors if e["error_type"] == "DuplicateRow"]
    assert [d["item_id"] for d in dup] == ["ok-plain"]
    flagged = {}
    for path in s["outputs"]["queues"].values():
        for r in pq.read_table(path).to_pylist():
            assert r["item_id"] and r["item_id"].strip()
            flagged.setdefault(r["item_id"], set()).add(r["label"])
    wrong = {}
    for item, outcome in expect.items():
        if isinstance(outcome, tuple):
            if got.get(item) != outcome:
                wrong[item] = (outcome, got.get(item))
        elif item in got:
            wrong[item] = (outcome, got[item])
        elif outcome == "flag" and not (label & flagged.get(item, set())):
            wrong[item] = (f"flag {label}", flagged.get(item))
    assert not wrong, wrong
    msgs = {e["item_id"]: e["message"] for e in errors}
    assert "20000x20000" in msgs["decompression-bomb"]
    assert "outside the allowed roots" in msgs["relative-traversal"]


def test_object_over_the_byte_limit_is_an_error_row_unread_past_the_limit(tmp_path):
    from logoscan import stages
    from logoscan.config import FetchConfig
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 5000)
    b = {"item_id": ["i"], "image_id": ["i"], "image_uri": [str(big)]}
    out = stages.fetch(b, FetchConfig(max_bytes=1000, allowed_roots=(str(tmp_path),)))
    assert out["error_stage"][0] == "fetch" and out["error_type"][0] == "ValueError"
    assert "1000-byte limit" in out["error_message"][0]

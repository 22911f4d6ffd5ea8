"""The reviewers' side: a new logo added with one command is found by the next sweep (no
retraining), gallery versions never disturb a sweep in flight, decisions flow back into the
gallery and the calibration crops, and the HTML report renders in a real headless Chromium."""
from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chromium

from logoscan.cli import main as cli
from logoscan.config import ScanConfig, StoreConfig
from logoscan.sweep import run_scan


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 catalog images; a references folder without the catalog's most common label, built as
    gallery `logos`; one sweep against it."""
    from logoscan.demo import make_sample_data
    work = tmp_path_factory.mktemp("review")
    paths = make_sample_data(work, n_images=12, seed=5)
    truth = pq.read_table(paths["truth"]).to_pylist()
    new_label = Counter(r["label"] for r in truth if r["label"]).most_common(1)[0][0]
    refs = pq.read_table(paths["references"])
    keep = [lab != new_label for lab in refs.column("label").to_pylist()]
    (work / "grefs").mkdir()
    pq.write_table(refs.filter(pa.array(keep)), work / "grefs" / "part-0.parquet")
    new_ref = [r for r in refs.to_pylist() if r["label"] == new_label][0]
    db = str(work / "milvus.db")
    assert cli(["gallery", "build", "--refs", str(work / "grefs"), "--milvus-uri", db, "--collection", "logos"]) == 0
    m = pq.read_table(paths["manifest"])
    m = m.filter(pa.array([x.startswith("item-") for x in m.column("item_id").to_pylist()])).to_pylist()
    m = list({r["item_id"]: r for r in m}.values())
    pq.write_table(pa.Table.from_pylist(m), work / "clean.parquet")
    items_with_new = {r["item_id"] for r in truth if r["label"] == new_label}
    assert items_with_new, "the sample must plant the label somewhere"
    return {"work": work, "db": db, "new_label": new_label, "new_ref": new_ref, "manifest": str(work / "clean.parquet"),
            "items_with_new": items_with_new}


def _scan(w, run_id) -> dict:
    return run_scan(ScanConfig(manifest=w["manifest"], milvus_uri=w["db"], out=str(w["work"] / "out"), run_id=run_id,
                               run_date="2026-11-23", engine="local", store=StoreConfig(write=False)))


def _rows(summary) -> list[dict]:
    rows = []
    for uri in summary["outputs"]["queues"].values():
        rows += pq.read_table(uri).to_pylist()
    return rows


def test_new_logo_with_one_command_is_found_by_the_next_sweep_and_versions_pin(world, capsys):
    from logoscan.gallery import Matcher, connect, versions
    w = world
    before = _scan(w, "before")
    assert not [r for r in _rows(before) if r["label"] == w["new_label"]]
    v1 = before["versions"]["gallery"]

    reading = Matcher(w["db"], "logos")  # a sweep reading the current version
    probe = reading.client.query(reading.collection, filter='logo_id != ""', output_fields=["vector"], limit=1)[0]
    pinned = reading.collection

    assert cli(["gallery", "add", "--refs", str(w["work"] / "grefs"), "--image", w["new_ref"]["image_uri"],
                "--label", w["new_label"], "--category", w["new_ref"]["category"],
                "--milvus-uri", w["db"], "--collection", "logos"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["gallery"]["references"] == added["gallery"]["references"] and added["added"]["label"] == w["new_label"]
    # the sweep in flight still reads its version, untouched
    assert reading.collection == pinned
    hits = reading.search(__import__("numpy").asarray([probe["vector"]], "float32"), 50)[0]
    assert w["new_label"] not in {h["label"] for h in hits}
    reading.close()

    after = _scan(w, "after")
    rows = _rows(after)
    found = {r["item_id"] for r in rows if r["label"] == w["new_label"]}
    assert found and found <= w["items_with_new"] | {r["item_id"] for r in rows}
    assert len(found) >= max(1, len(w["items_with_new"]) // 2)
    assert after["versions"]["gallery"] != v1 and {r["gallery_version"] for r in rows} == {after["versions"]["gallery"]}
    assert {r["gallery_version"] for r in _rows(before)} == {v1}
    c = connect(w["db"])
    try:
        vs = versions(c, "logos")
    finally:
        c.close()
    assert [v["current"] for v in vs] == [True, False] and vs[1]["gallery_version"] == v1

    # rollback is one switch; the next sweep matches the old version again
    assert cli(["gallery", "switch", "--milvus-uri", w["db"], "--collection", "logos", "--to", v1]) == 0
    capsys.readouterr()
    assert _scan(w, "rolled-back")["versions"]["gallery"] == v1
    assert cli(["gallery", "switch", "--milvus-uri", w["db"], "--collection", "logos",
                "--to", after["versions"]["gallery"]]) == 0
    capsys.readouterr()
    # the same references built again: no new version, nothing embedded again
    assert cli(["gallery", "build", "--refs", str(w["work"] / "grefs"), "--milvus-uri", w["db"],
                "--collection", "logos"]) == 0
    assert json.loads(capsys.readouterr().out)["gallery_version"] == after["versions"]["gallery"]
    c = connect(w["db"])
    try:
        assert len(versions(c, "logos")) == 2
    finally:
        c.close()


def test_decisions_become_exemplars_and_impostor_crops(world, capsys):
    from logoscan.calibration import read_labelled_crops
    w = world
    summary = _scan(w, "decided")
    rows = sorted(_rows(summary), key=lambda r: (r["item_id"], r["logo_id"]))
    assert len(rows) >= 2
    confirm, reject = rows[0], rows[-1]
    now = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
    decisions = [{"item_id": confirm["item_id"], "logo_id": confirm["logo_id"], "decision": "confirm",
                  "reviewer": "ana", "decided_at": now},
                 {"item_id": reject["item_id"], "logo_id": reject["logo_id"], "decision": "reject",
                  "reviewer": "bo", "decided_at": now},
                 {"item_id": "no-such-item", "logo_id": "x", "decision": "reject", "reviewer": "bo", "decided_at": now}]
    pq.write_table(pa.Table.from_pylist(decisions), w["work"] / "decisions.parquet")
    crops = w["work"] / "calibration-crops"
    args = ["gallery", "ingest", "--decisions", str(w["work"] / "decisions.parquet"),
            "--run", str(w["work"] / "out"), "--run-id", "decided", "--refs", str(w["work"] / "grefs"),
            "--crops", str(crops), "--milvus-uri", w["db"], "--collection", "logos"]
    refs_before = sum(pq.read_table(f).num_rows for f in (w["work"] / "grefs").glob("*.parquet"))
    assert cli(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["confirmed_exemplars"], r["impostor_crops"], r["unmatched"]) == (1, 1, 1)
    refs = pa.concat_tables([pq.read_table(f) for f in sorted((w["work"] / "grefs").glob("*.parquet"))],
                            promote_options="default").to_pylist()
    assert len(refs) == refs_before + 1 and r["gallery"]["references"] == refs_before + 1
    ex = [x for x in refs if "~confirmed~" in x["logo_id"]][0]
    assert ex["label"] == confirm["label"] and Path(ex["image_uri"]).exists()
    imp = read_labelled_crops(str(crops)).to_pylist()  # what `logoscan calibrate --crops` reads
    assert len(imp) == 1 and imp[0]["label"] == "" and imp[0]["kind"] == "rejected"
    assert imp[0]["rejected_label"] == reject["label"] and Path(imp[0]["image_uri"]).exists()

    assert cli(args + ["--no-build"]) == 0  # the same decisions again add nothing
    again = json.loads(capsys.readouterr().out)
    assert (again["confirmed_exemplars"], again["impostor_crops"], again["already_ingested"]) == (0, 0, 2)

    bad = w["work"] / "bad-decisions.parquet"
    pq.write_table(pa.Table.from_pylist([{**decisions[0], "decision": "maybe"}]), bad)
    assert cli(args[:2] + ["--decisions", str(bad)] + args[4:]) == 2
    assert "'decision' must be one of ['confirm', 'reject', 'undo']" in capsys.readouterr().err


def test_report_renders_every_card_in_headless_chromium(world, tmp_path, capsys):
    exe = chromium()
    w = world
    summary = _scan(w, "report")
    assert cli(["report", str(w["work"] / "out"), "--run-id", "report", "--out", str(tmp_path / "report")]) == 0
    r = json.loads(capsys.readouterr().out)
    queues = {q: pq.read_table(p).num_rows for q, p in summary["outputs"]["queues"].items()}
    assert r["cards"] == queues and sum(queues.values()) > 0
    for q, n in queues.items():
        page = tmp_path / "report" / f"{q}.html"
        dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        body = re.search(r"<body([^>]*)>", dom).group(1)
        attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
        # every card rendered with its three pictures decoded: crop, matched reference, product
        assert int(attrs["cards"]) == n, (q, attrs)
        assert int(attrs["images"]) == int(attrs["images-loaded"]) == 3 * n, (q, attrs)
        conf = [float(x) for x in re.findall(r'data-confidence="([-0-9.]+)"', dom)]
        assert conf == sorted(conf, reverse=True)  # most confident first
    index = (tmp_path / "report" / "index.html").read_text()
    assert all(f'href="{q}.html"' in index for q in queues)


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(monkeypatch):
    import io

    from structlog.testing import capture_logs

    from logoscan.sweep import collect as pipeline

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(pipeline.sys, "stderr", tty)
    col = pipeline.Collector(3)
    for done in range(1, 4):
        col.scanned.add(("item", str(done)))
        col.bar.last = 0  # no throttling in the test
        col._progress()
    frames = tty.getvalue().split("\r")
    assert "3/3 images" in frames[-1] and frames[-1].endswith("\n") and "[" + "#" * 30 + "]" in frames[-1]

    monkeypatch.setattr(pipeline.sys, "stderr", io.StringIO())  # a log file: no bar, log lines
    with capture_logs() as logs:
        col = pipeline.Collector(2)
        col.scanned.update({("a", "1"), ("b", "1")})
        col._progress()
    assert col.bar is None and [e["event"] for e in logs] == ["scan.progress"] and logs[0]["done"] == 2


def test_an_undone_decision_is_not_ingested(world, capsys):
    """`undo` (the review app's u) as the newest decision of a card: ingest skips that card."""
    w = world
    summary = _scan(w, "undone")
    row = sorted(_rows(summary), key=lambda r: (r["item_id"], r["logo_id"]))[0]
    t0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
    decisions = [{"item_id": row["item_id"], "logo_id": row["logo_id"], "decision": d, "reviewer": "ana",
                  "decided_at": t0.replace(minute=m)} for m, d in ((0, "confirm"), (1, "undo"))]
    pq.write_table(pa.Table.from_pylist(decisions), w["work"] / "undone.parquet")
    assert cli(["gallery", "ingest", "--decisions", str(w["work"] / "undone.parquet"), "--run", str(w["work"] / "out"),
                "--run-id", "undone", "--refs", str(w["work"] / "grefs"), "--crops", str(w["work"] / "ucrops"),
                "--no-build", "--milvus-uri", w["db"], "--collection", "logos"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["decisions"], r["undone"], r["confirmed_exemplars"], r["impostor_crops"]) == (0, 1, 0, 0)

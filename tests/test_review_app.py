"""`logoscan review` in a real browser (Debian's Chromium driven by Playwright; no browser
download): a queue gone through with the keyboard by two reviewers at once, undo, reload, the
decisions Parquet exactly, `gallery ingest` on it; and what an attacker tries: catalog text that
is HTML, no or a wrong token, a POST without the CSRF token, ids that are paths."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chromium
from PIL import Image

from logoscan import output
from logoscan.schema import ERRORS, FLAGGED

XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '"><img src=x onerror="window.__xss=2">'
TOKENS = {"alice-token-0000000001": "alice", "bob-token-00000000002": "bob"}


def _jpeg(color, size=(200, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(sample, tmp_path_factory):
    """A published run with two queues: brand (3 cards, real sample references) and prohibited (one
    card whose item id, label and OCR text are HTML)."""
    root = tmp_path_factory.mktemp("review-app")
    cat = root / "catalog"
    cat.mkdir()
    refs = pq.read_table(sample["references"]).to_pylist()
    brand = [r for r in refs if r["category"] == "brand"][:3]
    now = datetime.now(timezone.utc)
    rows = []
    for i, (ref, dist) in enumerate(zip(brand, (0.10, 0.20, 0.30))):
        (cat / f"p{i}.jpg").write_bytes(_jpeg((40 * i, 120, 200)))
        rows.append({"item_id": f"item-{i}", "image_id": f"item-{i}-0", "image_uri": str(cat / f"p{i}.jpg"),
                     "box": [10.0, 10.0, 90.0, 90.0], "det_score": 0.9, "label": ref["label"], "category": "brand",
                     "logo_id": ref["logo_id"], "distance": dist, "threshold": 0.5, "queue": "brand"})
    (cat / "x.jpg").write_bytes(_jpeg((200, 40, 40)))
    rows.append({"item_id": XSS_SCRIPT, "image_id": XSS_IMG, "image_uri": str(cat / "x.jpg"),
                 "box": [5.0, 5.0, 50.0, 50.0], "det_score": 0.8, "label": XSS_IMG, "category": "prohibited",
                 "logo_id": XSS_SCRIPT, "distance": 0.2, "threshold": 0.4, "queue": "prohibited",
                 "ocr_text": XSS_SCRIPT + XSS_IMG, "runner_up_label": XSS_SCRIPT, "runner_up_distance": 0.3,
                 # decided by the evidence model; its explanation carries catalog-like text too
                 "threshold_source": "evidence", "evidence_score": 0.91,
                 "evidence": json.dumps({"cut": 0.5, "log_odds": {"ocr_agreement": 2.1, XSS_SCRIPT: -0.4}})})
    common = {"run_id": "r1", "threshold_source": "category", "margin": None, "model_version": "m",
              "gallery_version": "logos-x", "scanned_at": now, "thumbnail_jpeg": _jpeg((0, 0, 0), (64, 64))}
    tables = {}
    for q in ("brand", "prohibited"):
        qrows = [{**common, **{k: v for k, v in r.items() if k != "queue"}} for r in rows if r["queue"] == q]
        tables[q] = pa.Table.from_pylist([{f.name: r.get(f.name) for f in FLAGGED} for r in qrows], schema=FLAGGED)
    out = root / "out"
    summary = {"run_id": "r1", "run_date": "2026-11-30", "flagged": len(rows), "rows_in": 4, "rows_errored": 0,
               "config": {"milvus_uri": sample["milvus"], "collection": "logos"},
               "versions": {"gallery": "logos-x", "detector": "detector-v2", "embedder": "embedder-v2"}}
    output.write_run(str(out), "r1", "2026-11-30", tables, ERRORS.empty_table(), summary, {})
    return {"out": str(out), "root": root, "rows": rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run):
    import uvicorn

    from logoscan.review_app import Review, create_app
    review = Review(run["out"])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(review, TOKENS), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "review": review}
    srv.should_exit = True
    t.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    exe = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


def _login(browser, url: str, token: str, path: str = "/"):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(url + path)
    assert page.url.endswith("/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector(".card")
    if path != "/":
        page.goto(url + path)
        page.wait_for_selector(".card")
    return ctx, page


def _progress(page) -> str:
    return page.inner_text("#progress")


def _wait_progress(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('progress').textContent === t", arg=text, timeout=10000)


def test_two_reviewers_go_through_a_queue_with_the_keyboard_and_ingest_reads_it(server, browser, run, tmp_path):
    url, review = server["url"], server["review"]
    ctx_a, a = _login(browser, url, "alice-token-0000000001")
    assert _progress(a) == "0 of 3 decided" and "reviewer: alice" in a.inner_text("#who")
    # most confident first: item-0 (distance 0.10) … item-2 (0.30)
    assert [e.inner_text() for e in a.query_selector_all(".card .item")] == \
        [f"item item-{i} · image item-{i}-0" for i in range(3)]
    a.keyboard.press("c")  # item-0 confirmed, on to the next
    _wait_progress(a, "1 of 3 decided")
    a.keyboard.press("r")  # item-1 rejected
    _wait_progress(a, "2 of 3 decided")
    a.keyboard.press("c")  # item-2 confirmed …
    _wait_progress(a, "3 of 3 decided")
    a.keyboard.press("u")  # … and taken back
    _wait_progress(a, "2 of 3 decided")
    a.reload()
    a.wait_for_selector(".card")
    assert _progress(a) == "2 of 3 decided"  # stored, not only shown
    decisions = [e.inner_text() for e in a.query_selector_all(".card .decision")]
    assert decisions == ["confirmed by alice", "rejected by alice", "undecided"]

    # a second reviewer on the same queue at the same time
    ctx_b, b = _login(browser, url, "bob-token-00000000002")
    assert _progress(b) == "2 of 3 decided" and "reviewer: bob" in b.inner_text("#who")
    b.keyboard.press("j")
    b.keyboard.press("j")
    b.keyboard.press("c")  # item-2 confirmed by bob
    _wait_progress(b, "3 of 3 decided")
    a.reload()
    a.wait_for_selector(".card")
    assert [e.inner_text() for e in a.query_selector_all(".card .decision")] == \
        ["confirmed by alice", "rejected by alice", "confirmed by bob"]
    # filters: undecided only shows nothing now; confirmations only by label
    a.check("#f-undecided")
    assert a.query_selector_all(".card") == []
    ctx_a.close()
    ctx_b.close()

    # the decisions Parquet, exactly: one part per decision, in the decisions contract
    parts = sorted(os.listdir(review.dir))
    assert len(parts) == 5 and all(p.endswith(".parquet") for p in parts)
    got = sorted((r for p in parts for r in pq.read_table(os.path.join(review.dir, p)).to_pylist()),
                 key=lambda r: r["decided_at"])
    assert [(r["item_id"], r["decision"], r["reviewer"], r["run_id"]) for r in got] == [
        ("item-0", "confirm", "alice", "r1"), ("item-1", "reject", "alice", "r1"),
        ("item-2", "confirm", "alice", "r1"), ("item-2", "undo", "alice", "r1"), ("item-2", "confirm", "bob", "r1")]
    brand = {r["item_id"]: r for r in run["rows"] if r["queue"] == "brand"}
    assert all(r["logo_id"] == brand[r["item_id"]]["logo_id"] and r["image_id"] == f"{r['item_id']}-0" for r in got)

    # gallery ingest reads the folder as it is: two confirmed exemplars, one impostor crop
    from logoscan.cli import main
    refs, crops = tmp_path / "refs", tmp_path / "crops"
    assert main(["gallery", "ingest", "--decisions", review.dir, "--run", run["out"], "--refs", str(refs),
                 "--crops", str(crops), "--no-build", "--milvus-uri", "unused.db", "--collection", "logos"]) == 0
    new_refs = [r for f in refs.glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    new_crops = [r for f in crops.glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert sorted(r["label"] for r in new_refs) == sorted([brand["item-0"]["label"], brand["item-2"]["label"]])
    assert [r["rejected_label"] for r in new_crops] == [brand["item-1"]["label"]]


def test_catalog_text_that_is_html_renders_as_text_in_the_app_and_the_report(server, browser, run, tmp_path):
    ctx, page = _login(browser, server["url"], "alice-token-0000000001", "/?queue=prohibited")
    text = page.inner_text("main")
    assert XSS_SCRIPT in text and XSS_IMG in text
    assert page.evaluate("window.__xss") is None
    assert page.query_selector_all("main img[src='x']") == []
    # the reviewer sees what decided the card
    assert f"decided by evidence P 0.91 (flags at ≥ 0.50): text read vs reference +2.1 · {XSS_SCRIPT} -0.4" in text
    ctx.close()

    from logoscan.report import write_report
    write_report(run["out"], str(tmp_path / "report"), run_id="r1")
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto((tmp_path / "report" / "prohibited.html").as_uri())
    text = page.inner_text("main")
    assert XSS_SCRIPT in text and XSS_IMG in text and page.evaluate("window.__xss") is None
    assert "decided by evidence P 0.91 (flags at ≥ 0.50): text read vs reference +2.1" in text
    ctx.close()


def _req(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    r = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_no_token_a_wrong_token_a_post_without_csrf_and_path_ids_are_refused(server):
    url = server["url"]
    good = {"Authorization": "Bearer alice-token-0000000001"}
    assert _req(url + "/api/cards")[0] == 401
    assert _req(url + "/api/cards", headers={"Authorization": "Bearer alice-token-0000000000"})[0] == 401
    assert _req(url + "/img/crop/0")[0] == 401
    status, page = _req(url + "/", headers=good)
    assert status == 200
    csrf = re.search(rb'name="csrf" content="([0-9a-f]+)"', page).group(1).decode()
    body = json.dumps({"card": 0, "decision": "reject"}).encode()
    post = {**good, "Content-Type": "application/json"}
    assert _req(url + "/api/decide", "POST", post, body)[0] == 403                         # no CSRF token
    assert _req(url + "/api/decide", "POST", {**post, "X-CSRF-Token": "0" * 64}, body)[0] == 403
    bob_csrf = {"Authorization": "Bearer bob-token-00000000002", "Content-Type": "application/json",
                "X-CSRF-Token": csrf}                                                        # alice's token, bob's login
    assert _req(url + "/api/decide", "POST", bob_csrf, body)[0] == 403
    bad = json.dumps({"card": 0, "decision": "delete"}).encode()
    assert _req(url + "/api/decide", "POST", {**post, "X-CSRF-Token": csrf}, bad)[0] == 400
    assert _req(url + "/login", "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                b"token=alice-token-0000000001")[0] == 403                                  # login without CSRF
    for path in ("/img/product/..%2F..%2F..%2Fetc%2Fpasswd", "/img/../../../etc/passwd", "/img/crop/99999",
                 "/img/crop/-1", "/img/file/0", "/api/cards?queue=..%2F..%2Fetc", "/etc/passwd"):
        status, data = _req(url + path, headers=good)
        assert status in (400, 404), (path, status)
        assert b"root:" not in data
    status, data = _req(url + "/img/crop/0", headers=good)
    assert status == 200 and data[:2] == b"\xff\xd8"


def test_review_refuses_to_listen_beyond_loopback_without_tokens(run, monkeypatch, capsys):
    from logoscan.cli import main
    monkeypatch.delenv("LOGOSCAN_REVIEW_TOKENS", raising=False)
    assert main(["review", run["out"], "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    assert "without reviewer tokens" in capsys.readouterr().err
    monkeypatch.setenv("LOGOSCAN_REVIEW_TOKENS", "alice=short")
    assert main(["review", run["out"], "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    assert "shorter than 16" in capsys.readouterr().err


def test_a_run_on_s3_is_reviewed_and_its_decisions_stored_there(run, s3):
    """The same app over an s3:// output: decisions are parts under the run's S3 prefix and a server
    started again shows them."""
    from pathlib import Path

    from conftest import upload_dir
    from logoscan.review_app import Review
    s3.create_bucket(Bucket="review-out")
    upload_dir(s3, "review-out", Path(run["out"]), "out")
    # the summary names local queue files: an S3 run's summary names its own s3:// objects
    key = "out/runs/r1/summary.json"
    summary = json.loads(s3.get_object(Bucket="review-out", Key=key)["Body"].read())
    summary["outputs"]["queues"] = {q: p.replace(run["out"], "s3://review-out/out")
                                    for q, p in summary["outputs"]["queues"].items()}
    s3.put_object(Bucket="review-out", Key=key, Body=json.dumps(summary).encode())
    r = Review("s3://review-out/out", "r1")
    assert r.dir == "s3://review-out/out/decisions/run_date=2026-11-30/r1"
    r.decide(0, "reject", "carol", "looks like a sticker")
    again = Review("s3://review-out/out", "r1")
    card = again.card_json(again.cards[0])
    assert (card["decision"], card["decided_by"], card["note"]) == ("reject", "carol", "looks like a sticker")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="review-out", Prefix="out/decisions/")["Contents"]]
    carol = [k for k in keys if "/carol-" in k]
    assert len(carol) == 1 and carol[0].startswith("out/decisions/run_date=2026-11-30/r1/carol-")

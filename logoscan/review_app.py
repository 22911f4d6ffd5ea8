"""`logoscan review`: reviewers go through a published run's queues in the browser and decide.

One queue at a time, the same cards as `logoscan report` (flagged crop, matched reference, the
product with the region outlined, distance against threshold, runner-up, OCR text), most
confident first, with filters (category, label, confidence range, undecided only). Keyboard
first: j/k (or arrows) next/previous, c confirm, r reject, n note, u undo; the mouse works too.
"37 of 99 decided" is always on screen, and a decided card shows its decision and who made it.

Decisions are stored as they are made, in the decisions contract `gallery ingest` reads
(schema.DECISIONS_*), one part per decision, written whole, under
``OUT/decisions/run_date=<D>/<run_id>/<reviewer>-<UTC time>-<random>.parquet``: nothing is lost when
the server or the browser closes, and two reviewers never write the same file. The newest
decision per (item, image, reference) wins, as `gallery ingest` rules; an ``undo`` decision makes a
card undecided again (ingest skips it). ``gallery ingest --decisions`` reads that folder as it is.

Why Starlette on uvicorn: the app is a handful of routes (a page, JSON, pictures, one POST), so
the ASGI toolkit itself is enough; FastAPI would add request models and an OpenAPI schema this
app does not use. Both are small, well kept, and what FastAPI runs on anyway.

Security: the page renders every string from the catalog or OCR with ``textContent`` (never as
HTML) and the HTML shell holds no data; pictures are addressed by card number, never by a path,
so only files of this run are served; state-changing requests need the session's CSRF token;
the server binds to 127.0.0.1 by default, and any other address requires reviewer tokens
(``LOGOSCAN_REVIEW_TOKENS="alice=TOKEN,bob=TOKEN"`` or ``--tokens-file`` with ``name token``
lines), without which it refuses to start. With tokens, a reviewer logs in with theirs and their
name comes from it; without (loopback only), the reviewer is the operating-system user.
"""
from __future__ import annotations

import getpass
import hashlib
import hmac
import io
import ipaddress
import json
import os
import secrets
import threading
from functools import lru_cache
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from logoscan import output, storage
from logoscan.evidence import confidence, describe
from logoscan.log import get_logger

log = get_logger(__name__)

COOKIE = "logoscan_review"
DECISIONS = ("confirm", "reject", "undo")


class ReviewError(RuntimeError):
    pass


# ------------------------------------------------------------------ reviewers

def read_tokens(tokens_file: str | None = None) -> dict[str, str]:
    """token → reviewer name, from ``LOGOSCAN_REVIEW_TOKENS`` ("name=token,name=token") and/or a
    file of ``name token`` lines. A token shorter than 16 characters is refused."""
    pairs = []
    for part in (os.environ.get("LOGOSCAN_REVIEW_TOKENS") or "").split(","):
        if part.strip():
            name, sep, tok = part.strip().partition("=")
            if not sep:
                raise ReviewError("LOGOSCAN_REVIEW_TOKENS must look like name=token,name=token")
            pairs.append((name.strip(), tok.strip()))
    if tokens_file:
        try:
            lines = open(tokens_file, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise ReviewError(f"cannot read the tokens file {tokens_file}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                fields = line.split()
                if len(fields) != 2:
                    raise ReviewError(f"{tokens_file}:{n}: expected 'name token'")
                pairs.append((fields[0], fields[1]))
    out = {}
    for name, tok in pairs:
        if len(tok) < 16:
            raise ReviewError(f"the token of reviewer {name!r} is shorter than 16 characters")
        out[tok] = name
    return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ the run and its decisions

class Review:
    """A published run's cards and the decisions made on them (shared by every request)."""

    def __init__(self, out: str, run_id: str | None = None, milvus_uri: str | None = None,
                 collection: str | None = None, product_px: int = 320):
        from logoscan.report import reference_pictures
        self.out = storage.absolute(out)
        summary_uri = output.find_summary(self.out, run_id, prefer_flagged=True)
        self.summary = json.loads(storage.read_bytes(summary_uri))
        self.run_id, self.run_date = self.summary["run_id"], self.summary["run_date"]
        if not self.summary["outputs"]["queues"]:
            raise ReviewError(f"run {self.run_id} flagged nothing: there is nothing to review")
        self.cards: list[dict] = []
        for queue, table in output.read_queues(self.summary).items():
            rows = table.to_pylist()
            rows.sort(key=confidence, reverse=True)  # most confident first
            for r in rows:
                self.cards.append({**r, "queue": queue, "n": len(self.cards)})
        self.queues = sorted({c["queue"] for c in self.cards})
        from logoscan.gallery import release_lite
        self.refs = reference_pictures(self.summary, milvus_uri, collection,
                                        sorted({c["logo_id"] for c in self.cards}))
        release_lite(milvus_uri or self.summary["config"]["milvus_uri"])  # a Lite .db stays free for sweeps
        self.product_px = product_px
        self.boxes: dict[str, list] = {}  # image_uri -> every flagged box in it (outlined on its picture)
        for c in self.cards:
            self.boxes.setdefault(c["image_uri"], []).append(c["box"])
        from logoscan.report import product_thumb  # each picture read once, the recent ones kept
        self._product = lru_cache(maxsize=512)(lambda uri: product_thumb(uri, self.boxes[uri], self.product_px))
        self.dir = storage.join(self.out, "decisions", f"run_date={self.run_date}", output.safe_name(self.run_id))
        self.lock = threading.Lock()
        self.latest: dict[tuple, dict] = {}
        self._load()

    @staticmethod
    def key(row: dict) -> tuple:
        return (row["item_id"], row.get("image_id"), row["logo_id"])

    def _load(self) -> None:
        """Decisions already made on this run (by anyone, before this server started)."""
        from logoscan.feedback import read_decisions
        try:
            if not storage.list_files(self.dir, ".parquet"):
                return
        except FileNotFoundError:
            return
        for r in sorted(read_decisions(self.dir).to_pylist(), key=lambda r: r["decided_at"]):
            self.latest[self.key(r)] = r

    def decide(self, n: int, decision: str, reviewer: str, note: str | None) -> dict:
        from logoscan.schema import DECISIONS_OPTIONAL, DECISIONS_REQUIRED
        card = self.cards[n]
        now = datetime.now(timezone.utc)
        row = {"item_id": card["item_id"], "logo_id": card["logo_id"], "decision": decision, "reviewer": reviewer,
               "decided_at": now, "image_id": card["image_id"], "run_id": self.run_id, "note": note or None}
        schema = pa.schema(list(DECISIONS_REQUIRED) + list(DECISIONS_OPTIONAL))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row], schema=schema), buf)
        name = (f"{output.safe_name(reviewer)}-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}.parquet")
        storage.write_bytes(storage.join(self.dir, name), buf.getvalue())  # stored before it is shown as made
        with self.lock:
            self.latest[self.key(card)] = row
        log.info("review.decided", run_id=self.run_id, item_id=card["item_id"], logo_id=card["logo_id"],
                 decision=decision, reviewer=reviewer)
        return self.card_json(card)

    def state(self, card: dict) -> dict | None:
        d = self.latest.get(self.key(card))
        return None if d is None or d["decision"] == "undo" else d

    def card_json(self, c: dict) -> dict:
        d = self.state(c)
        return {"n": c["n"], "queue": c["queue"], "item_id": c["item_id"], "image_id": c["image_id"],
                "label": c["label"], "category": c["category"], "logo_id": c["logo_id"],
                "distance": c["distance"], "threshold": c["threshold"],
                "confidence": round(confidence(c), 4), "det_score": c["det_score"],
                "decided_by_evidence": c.get("threshold_source") == "evidence",
                "evidence": describe(c.get("evidence_score"), c.get("evidence")),
                "runner_up_label": c.get("runner_up_label"), "runner_up_distance": c.get("runner_up_distance"),
                "ocr_text": c.get("ocr_text"), "decision": d["decision"] if d else None,
                "decided_by": d["reviewer"] if d else None, "note": d.get("note") if d else None,
                "has_ref": c["logo_id"] in self.refs}

    def product(self, n: int) -> bytes | None:
        """Card ``n``'s product picture with its image's flagged boxes outlined."""
        return self._product(self.cards[n]["image_uri"])


# ------------------------------------------------------------------ the web app

def create_app(review: Review, tokens: dict[str, str] | None = None):
    """The Starlette app. ``tokens``: token → reviewer; empty: the OS user (loopback only)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    tokens = dict(tokens or {})
    secret = secrets.token_bytes(32)  # per server process: CSRF tokens die with it
    local_user = getpass.getuser()

    def reviewer(request: Request) -> str | None:
        if not tokens:
            return local_user
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        for tok, name in tokens.items():  # constant time per token
            if given and hmac.compare_digest(given.encode(), tok.encode()):
                return name
        return None

    def csrf(name: str) -> str:
        return hmac.new(secret, name.encode(), hashlib.sha256).hexdigest()

    def unauthorized(request: Request):
        if request.url.path.startswith("/api/") or request.url.path.startswith("/img/"):
            return JSONResponse({"error": "log in with your reviewer token"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    def card_of(request: Request) -> int | None:
        n = request.path_params.get("n")
        return n if isinstance(n, int) and 0 <= n < len(review.cards) else None

    async def page(request: Request):
        name = reviewer(request)
        if name is None:
            return unauthorized(request)
        return HTMLResponse(_PAGE.replace("__CSRF__", csrf(name)), headers=_SECURITY_HEADERS)

    async def login(request: Request):
        if not tokens:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            pre = secrets.token_hex(16)
            r = HTMLResponse(_LOGIN.replace("__PRE__", pre), headers=_SECURITY_HEADERS)
            r.set_cookie("logoscan_login", pre, httponly=True, samesite="strict")
            return r
        from urllib.parse import parse_qs  # a two-field urlencoded form: no python-multipart needed
        fields = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        form = {k: v[0] for k, v in fields.items()}
        pre = request.cookies.get("logoscan_login") or ""
        if not pre or not hmac.compare_digest(pre, str(form.get("csrf", ""))):
            return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        tok = str(form.get("token", "")).strip()
        if not any(hmac.compare_digest(tok.encode(), t.encode()) for t in tokens):
            return HTMLResponse(_LOGIN.replace("__PRE__", pre).replace("<!--msg-->", "<p>Unknown token.</p>"),
                                status_code=401, headers=_SECURITY_HEADERS)
        r = RedirectResponse("/", status_code=303)
        r.set_cookie(COOKIE, tok, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return r

    async def cards(request: Request):
        name = reviewer(request)
        if name is None:
            return unauthorized(request)
        queue = request.query_params.get("queue") or (review.queues[0] if review.queues else "")
        if queue not in review.queues:
            return JSONResponse({"error": "no such queue"}, status_code=404)
        items = [review.card_json(c) for c in review.cards if c["queue"] == queue]
        return JSONResponse({"run_id": review.run_id, "run_date": review.run_date, "reviewer": name,
                             "queues": review.queues, "queue": queue, "cards": items},
                            headers={"Cache-Control": "no-store"})

    async def decide(request: Request):
        name = reviewer(request)
        if name is None:
            return unauthorized(request)
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), csrf(name)):
            return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        try:
            body = await request.json()
            n, decision = int(body["card"]), str(body["decision"])
            note = body.get("note")
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected JSON {card, decision, note}"}, status_code=400)
        if not 0 <= n < len(review.cards) or decision not in DECISIONS or (note is not None and not isinstance(note, str)):
            return JSONResponse({"error": f"card must be a card number, decision one of {list(DECISIONS)}"},
                                status_code=400)
        return JSONResponse(review.decide(n, decision, name, (note or "")[:2000] or None))

    async def picture(request: Request):
        if reviewer(request) is None:
            return unauthorized(request)
        n = card_of(request)
        if n is None:
            return Response("no such card", status_code=404)
        kind = request.path_params["kind"]
        c = review.cards[n]
        data = {"crop": lambda: c["thumbnail_jpeg"], "ref": lambda: review.refs.get(c["logo_id"]),
                "product": lambda: review.product(n)}.get(kind, lambda: None)()
        if not data:
            return Response("not available", status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    routes = [Route("/", page), Route("/login", login, methods=["GET", "POST"]),
              Route("/api/cards", cards), Route("/api/decide", decide, methods=["POST"]),
              Route("/img/{kind:str}/{n:int}", picture)]
    return Starlette(routes=routes)


def serve(out: str, run_id: str | None = None, host: str = "127.0.0.1", port: int = 8765,
          tokens_file: str | None = None, milvus_uri: str | None = None, collection: str | None = None,
          queue: str | None = None) -> None:
    import uvicorn
    tokens = read_tokens(tokens_file)
    if not _loopback(host) and not tokens:
        raise ReviewError(f"refusing to serve on {host} without reviewer tokens: set LOGOSCAN_REVIEW_TOKENS "
                          "(name=token,…) or --tokens-file, or bind to 127.0.0.1")
    review = Review(out, run_id, milvus_uri, collection)
    if queue is not None and queue not in review.queues:
        raise ReviewError(f"run {review.run_id} has no queue {queue!r}; it has {review.queues}")
    log.info("review.serving", url=f"http://{host}:{port}/", run_id=review.run_id, cards=len(review.cards),
             queues=review.queues, decisions=review.dir, reviewers=sorted(set(tokens.values())) or [getpass.getuser()])
    from urllib.parse import quote
    url = f"http://{host}:{port}/" + (f"?queue={quote(queue)}" if queue else "")
    print(f"reviewing run {review.run_id} ({len(review.cards)} cards in {len(review.queues)} queue(s)) at {url} "
          f"— decisions go to {review.dir}", flush=True)
    uvicorn.run(create_app(review, tokens), host=host, port=port, log_level="warning")


# ------------------------------------------------------------------ the page (no data in it: JSON, rendered as text)

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>logoscan review: log in</title>
<style>body{font-family:system-ui,sans-serif;margin:40px}input{font-size:16px;padding:6px;width:28em}</style></head>
<body><h1>logoscan review</h1><!--msg--><form method="post" action="/login">
<input type="hidden" name="csrf" value="__PRE__"><label>Reviewer token<br>
<input name="token" type="password" autofocus autocomplete="current-password"></label>
<button type="submit">Log in</button></form></body></html>"""

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>logoscan review</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><meta name="csrf" content="__CSRF__">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{position:sticky;top:0;padding:10px 16px;background:#20232a;color:#fff;display:flex;gap:16px;align-items:center;flex-wrap:wrap;z-index:2}
header select,header input{font-size:13px} header input[type=number]{width:5em} header{font-size:14px}
.missing{width:112px;height:112px;display:flex;align-items:center;justify-content:center;border:1px dashed #bbb}
#progress{font-weight:600} #who{color:#bbb} #help{color:#9cf;font-size:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px;padding:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:10px;border:3px solid transparent}
.card.current{border-color:#36f}
.card.confirm{background:#eaf7ea} .card.reject{background:#fbeaea}
.pics{display:flex;gap:8px;align-items:flex-start}
.pics figure{margin:0;text-align:center;font-size:11px;color:#666}
.pics img{display:block;border:1px solid #ddd;background:#fff;width:112px;height:112px;object-fit:contain}
.pics img.product{width:160px;height:160px}
.facts{margin-top:8px;font-size:13px;line-height:1.45} .label{font-size:16px;font-weight:600}
.decision{margin-top:6px;font-weight:600} .buttons{margin-top:6px} .buttons button{margin-right:6px}
</style></head><body>
<header><span id="run"></span><select id="queue" aria-label="queue"></select>
<span id="progress" aria-live="polite"></span><span id="who"></span>
<label>category <select id="f-category"><option value="">all</option></select></label>
<label>label <select id="f-label"><option value="">all</option></select></label>
<label>confidence <input id="f-min" type="number" step="0.01" size="5" placeholder="min"> –
<input id="f-max" type="number" step="0.01" size="5" placeholder="max"></label>
<label><input id="f-undecided" type="checkbox"> undecided only</label>
<span id="help">j/k next/previous · c confirm · r reject · n note · u undo</span></header>
<main id="cards"></main>
<script>
"use strict";
const CSRF = document.querySelector('meta[name=csrf]').content;
let data = null, shown = [], cur = 0, undo = [];
const $ = id => document.getElementById(id);
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text); return e; }
function fmt(x) { return x === null || x === undefined ? '' : Number(x).toFixed(3); }
async function load(queue) {
  const r = await fetch('/api/cards' + (queue ? '?queue=' + encodeURIComponent(queue) : ''), {cache: 'no-store'});
  if (r.status === 401) { location.href = '/login'; return; }
  data = await r.json();
  $('run').textContent = 'run ' + data.run_id + ' (' + data.run_date + ')';
  $('who').textContent = 'reviewer: ' + data.reviewer;
  const q = $('queue'); q.replaceChildren();
  for (const name of data.queues) { const o = el('option', '', name); o.value = name; o.selected = name === data.queue; q.append(o); }
  for (const [id, key] of [['f-category', 'category'], ['f-label', 'label']]) {
    const s = $(id), keep = s.value; s.replaceChildren(el('option', '', 'all')); s.firstChild.value = '';
    for (const v of [...new Set(data.cards.map(c => c[key]))].sort()) { const o = el('option', '', v); o.value = v; s.append(o); }
    s.value = keep; }
  render();
}
function filtered() {
  const cat = $('f-category').value, lab = $('f-label').value, undec = $('f-undecided').checked;
  const lo = parseFloat($('f-min').value), hi = parseFloat($('f-max').value);
  return data.cards.filter(c => (!cat || c.category === cat) && (!lab || c.label === lab) && (!undec || !c.decision)
    && (isNaN(lo) || c.confidence >= lo) && (isNaN(hi) || c.confidence <= hi));
}
function cardNode(c) {
  const a = el('article', 'card' + (c.decision ? ' ' + c.decision : '')); a.dataset.n = c.n; a.tabIndex = -1;
  const pics = el('div', 'pics');
  for (const [kind, cap, cls] of [['crop', 'flagged crop', ''], ['ref', 'matched reference', ''], ['product', 'product, region outlined', 'product']]) {
    const f = el('figure'), img = el('img', cls); img.loading = 'lazy'; img.alt = cap;
    img.addEventListener('error', () => img.replaceWith(el('div', 'missing', 'not available')));
    img.src = '/img/' + kind + '/' + c.n; f.append(img, el('figcaption', '', cap)); pics.append(f); }
  const facts = el('div', 'facts');
  const lab = el('div', 'label', c.label); lab.append(' ', el('small', '', '(' + c.category + ')')); facts.append(lab);
  facts.append(el('div', 'dist', 'distance ' + fmt(c.distance) + (c.distance <= c.threshold ? ' ≤' : ' >') + ' threshold ' + fmt(c.threshold) + ' (confidence ' + fmt(c.confidence) + ')'));
  facts.append(el('div', 'item', 'item ' + c.item_id + ' · image ' + c.image_id));
  facts.append(el('div', '', 'reference ' + c.logo_id + ' · detector score ' + Number(c.det_score).toFixed(2)));
  if (c.runner_up_label) facts.append(el('div', '', 'runner-up ' + c.runner_up_label + ' at ' + fmt(c.runner_up_distance)));
  if (c.ocr_text) facts.append(el('div', 'ocr', 'text read: “' + c.ocr_text + '”'));
  if (c.evidence) facts.append(el('div', 'evidence', (c.decided_by_evidence ? 'decided by evidence ' : 'evidence ') + c.evidence));
  const d = el('div', 'decision', c.decision ? (c.decision === 'confirm' ? 'confirmed' : 'rejected') + ' by ' + c.decided_by
    + (c.note ? ' — note: ' + c.note : '') : 'undecided');
  const b = el('div', 'buttons');
  for (const [act, txt] of [['confirm', 'Confirm (c)'], ['reject', 'Reject (r)'], ['note', 'Note (n)']]) {
    const btn = el('button', '', txt); btn.type = 'button';
    btn.addEventListener('click', () => { cur = shown.findIndex(x => x.n === c.n); act === 'note' ? note() : decide(act); });
    b.append(btn); }
  a.append(pics, facts, d, b);
  a.addEventListener('click', () => { cur = shown.findIndex(x => x.n === c.n); highlight(); });
  return a;
}
function render() {
  shown = filtered(); if (cur >= shown.length) cur = Math.max(0, shown.length - 1);
  $('cards').replaceChildren(...shown.map(cardNode));
  const done = data.cards.filter(c => c.decision).length;
  $('progress').textContent = done + ' of ' + data.cards.length + ' decided';
  document.body.dataset.decided = done; document.body.dataset.cards = data.cards.length;
  highlight();
}
function highlight() {
  document.querySelectorAll('.card.current').forEach(e => e.classList.remove('current'));
  const c = shown[cur]; if (!c) return;
  const node = document.querySelector('.card[data-n="' + c.n + '"]');
  if (node) { node.classList.add('current'); node.scrollIntoView({block: 'nearest'}); }
  document.body.dataset.current = c.n;
}
async function post(n, decision, noteText) {
  const r = await fetch('/api/decide', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': CSRF},
    body: JSON.stringify({card: n, decision: decision, note: noteText})});
  if (!r.ok) { alert('not saved: ' + (await r.text())); return null; }
  const c = await r.json(); const i = data.cards.findIndex(x => x.n === c.n); data.cards[i] = c; return c;
}
async function decide(decision, noteText) {
  const c = shown[cur]; if (!c) return;
  undo.push({n: c.n, before: c.decision ? {decision: c.decision, note: c.note} : null});
  await post(c.n, decision, noteText === undefined ? c.note : noteText);
  if (cur < shown.length - 1 && noteText === undefined) cur++;
  render();
}
async function note() {
  const c = shown[cur]; if (!c) return;
  if (!c.decision) { alert('Decide first (c or r), then add a note.'); return; }
  const t = prompt('Note for ' + c.item_id, c.note || ''); if (t === null) return;
  await decide(c.decision, t);
}
async function undoLast() {
  const u = undo.pop(); if (!u) return;
  await post(u.n, u.before ? u.before.decision : 'undo', u.before ? u.before.note : null);
  const i = shown.findIndex(x => x.n === u.n); if (i >= 0) cur = i; render();
}
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT' || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === 'j' || k === 'ArrowRight' || k === 'ArrowDown') { cur = Math.min(cur + 1, shown.length - 1); highlight(); }
  else if (k === 'k' || k === 'ArrowLeft' || k === 'ArrowUp') { cur = Math.max(cur - 1, 0); highlight(); }
  else if (k === 'c') decide('confirm'); else if (k === 'r') decide('reject');
  else if (k === 'n') note(); else if (k === 'u') undoLast(); else return;
  e.preventDefault();
});
$('queue').addEventListener('change', e => { cur = 0; load(e.target.value); });
for (const id of ['f-category', 'f-label', 'f-min', 'f-max', 'f-undecided']) $(id).addEventListener('input', () => { cur = 0; render(); });
load(new URLSearchParams(location.search).get('queue'));
</script></body></html>"""

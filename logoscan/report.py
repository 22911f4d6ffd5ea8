"""`logoscan report`: static HTML review pages for a run, one per queue, pictures first.

Each card shows the flagged crop beside the reference logo it matched and the product image (the
region outlined), then the label, the distance against its threshold and the item. Cards are
sorted by confidence: how far under its threshold the distance is. Every picture is inlined as
a data: URI, so a page is one file that opens anywhere (a laptop, an S3 static site) and shows
nothing from outside it. Long queues are split into pages of ``page_size`` cards.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw

from logoscan import output, storage
from logoscan.evidence import confidence, describe
from logoscan.images import decode
from logoscan.log import get_logger

log = get_logger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{padding:12px 20px;background:#20232a;color:#fff}
header a{color:#9cf} header small{color:#bbb}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px;padding:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:10px}
.pics{display:flex;gap:8px;align-items:flex-start}
.pics figure{margin:0;text-align:center;font-size:11px;color:#666}
.pics img{display:block;border:1px solid #ddd;background:#fff;image-rendering:auto}
.crop img,.ref img{width:112px;height:112px;object-fit:contain}
.product img{max-width:160px;max-height:160px}
.missing{width:112px;height:112px;display:flex;align-items:center;justify-content:center;border:1px dashed #bbb}
.facts{margin-top:8px;font-size:13px;line-height:1.45}
.label{font-size:16px;font-weight:600}
.dist{font-variant-numeric:tabular-nums}
.ok{color:#070} .weak{color:#a60}
nav{padding:8px 20px} nav a{margin-right:10px}
table{border-collapse:collapse;margin:16px 20px;background:#fff}
td,th{padding:6px 12px;border-bottom:1px solid #ddd;text-align:left}
"""

# counts the pictures that decoded, for people (the header) and for the headless-browser test
SCRIPT = """
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('.card img')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.cards = document.querySelectorAll('.card').length;
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = ok;
});
"""


def _uri(jpeg: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(jpeg).decode()}"


def product_thumb(uri: str, boxes: list, px: int) -> bytes | None:
    """The product image, small, with the flagged regions outlined; None if it can't be read."""
    try:
        im = Image.fromarray(decode(storage.read_bytes(uri, 64 << 20), 50_000_000))
    except Exception as e:  # noqa: BLE001 - the catalog moves on; the card says so
        log.warning("report.product_unreadable", image_uri=uri, error=str(e)[:200])
        return None
    scale = px / max(im.size)
    im = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    draw = ImageDraw.Draw(im)
    for b in boxes:
        draw.rectangle([v * scale for v in b], outline=(230, 30, 30), width=2)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def reference_pictures(summary: dict, milvus_uri: str | None, collection: str | None, logo_ids: list[str]) -> dict:
    from logoscan.gallery import reference_thumbnails
    uri = milvus_uri or summary["config"]["milvus_uri"]
    # the run's pinned version first; then the gallery's alias (the version may have been pruned)
    names = [collection] if collection else [summary["config"]["collection"],
                                             summary["versions"]["gallery"].rsplit("-", 1)[0]]
    for name in names:
        try:
            found = reference_thumbnails(uri, name, logo_ids)
        except Exception as e:  # noqa: BLE001
            log.warning("report.references_unavailable", collection=name, error=str(e)[:200])
            continue
        if found:
            return found
    return {}


def _figure(cls: str, caption: str, jpeg: bytes | None, alt: str) -> str:
    pic = (f'<img src="{_uri(jpeg)}" alt="{html.escape(alt)}">' if jpeg else
           '<div class="missing">not available</div>')
    return f'<figure class="{cls}">{pic}<figcaption>{caption}</figcaption></figure>'


def _card(r: dict, ref: bytes | None, product: bytes | None) -> str:
    conf = confidence(r)
    cls = "ok" if conf >= 0.1 * (r["threshold"] if r.get("threshold_source") != "evidence" else 1.0) else "weak"
    e = html.escape
    facts = [f'<div class="label">{e(r["label"])} <small>({e(r["category"])})</small></div>',
             f'<div class="dist {cls}">distance {r["distance"]:.3f} '
             f'{"≤" if r["distance"] <= r["threshold"] else "&gt;"} threshold {r["threshold"]:.3f} '
             f'(confidence {conf:+.3f})</div>',
             f'<div>item <b>{e(r["item_id"])}</b> · image {e(str(r["image_id"]))}</div>',
             f'<div>reference {e(r["logo_id"])} · detector score {r["det_score"]:.2f}</div>']
    if r.get("runner_up_label"):
        facts.append(f'<div>runner-up {e(r["runner_up_label"])} at {r["runner_up_distance"]:.3f}</div>')
    if r.get("ocr_text"):
        facts.append(f'<div>text read: “{e(r["ocr_text"])}”</div>')
    if ev := describe(r.get("evidence_score"), r.get("evidence")):
        facts.append(f'<div class="evidence">{"decided by " if r.get("threshold_source") == "evidence" else ""}'
                     f'evidence {e(ev)}</div>')
    return (f'<article class="card" data-item="{e(r["item_id"])}" data-label="{e(r["label"])}" '
            f'data-confidence="{conf:.4f}"><div class="pics">'
            + _figure("crop", "flagged crop", r["thumbnail_jpeg"], f"crop of {r['item_id']}")
            + _figure("ref", "matched reference", ref, f"reference {r['logo_id']}")
            + _figure("product", "product, flagged regions outlined", product, f"product {r['item_id']}")
            + '</div><div class="facts">' + "".join(facts) + "</div></article>")


def _page(title: str, head: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style>'
            f'<script>{SCRIPT}</script></head><body><header>{head}</header>{body}</body></html>')


def write_report(run_output: str, out: str | None = None, run_id: str | None = None, milvus_uri: str | None = None,
                 collection: str | None = None, product_px: int = 160, page_size: int = 500,
                 threads: int = 8) -> dict:
    t0 = time.time()
    summary_uri = output.find_summary(run_output, run_id, prefer_flagged=True)
    summary = json.loads(storage.read_bytes(summary_uri))
    out = out or storage.join(summary_uri.rsplit("/", 1)[0], "report")
    queues = {q: t.to_pylist() for q, t in output.read_queues(summary).items()}
    rows = [r for q in queues.values() for r in q]
    refs = reference_pictures(summary, milvus_uri, collection, sorted({r["logo_id"] for r in rows}))
    boxes = {}
    for r in rows:
        boxes.setdefault(r["image_uri"], []).append(r["box"])
    with ThreadPoolExecutor(threads) as pool:
        products = dict(zip(boxes, pool.map(lambda u: product_thumb(u, boxes[u], product_px), boxes)))
    run = html.escape(summary["run_id"])
    sub = (f'<small>run {run} · {html.escape(summary["run_date"])} · gallery '
           f'{html.escape(summary["versions"]["gallery"])} · models {html.escape(summary["versions"]["detector"])}'
           f' + {html.escape(summary["versions"]["embedder"])}</small>')
    pages, index_rows = {}, []
    for q, qrows in queues.items():
        qrows.sort(key=lambda r: -confidence(r))  # most confident first
        chunks = [qrows[i:i + page_size] for i in range(0, len(qrows), page_size)] or [[]]
        names = [f"{output.safe_name(q)}.html"] + [f"{output.safe_name(q)}-{i + 1}.html" for i in range(1, len(chunks))]
        for i, (name, chunk) in enumerate(zip(names, chunks)):
            nav = ("<nav>" + "".join(f'<a href="{n}">{"page " + str(j + 1) if n != name else f"<b>page {j + 1}</b>"}</a>'
                                     for j, n in enumerate(names)) + "</nav>") if len(names) > 1 else ""
            cards = "".join(_card(r, refs.get(r["logo_id"]), products.get(r["image_uri"])) for r in chunk)
            head = (f'<a href="index.html">all queues</a> · <b>{html.escape(q)}</b>: {len(qrows)} flagged '
                    f'(most confident first)<br>{sub}')
            pages[name] = _page(f"{q} — {summary['run_id']}", head, nav + f"<main>{cards}</main>" + nav)
        index_rows.append(f'<tr><td><a href="{names[0]}">{html.escape(q)}</a></td><td>{len(qrows)}</td>'
                          f'<td>{len({r["item_id"] for r in qrows})}</td></tr>')
    index = _page(f"review — {summary['run_id']}", f"<b>Review queues</b><br>{sub}",
                  "<table><tr><th>queue</th><th>flagged regions</th><th>items</th></tr>" + "".join(index_rows)
                  + f"</table><p style='margin:0 20px'>{summary['rows_in']} images in, "
                  f"{summary['rows_errored']} errors.</p>")
    pages["index.html"] = index
    for name, text in pages.items():
        storage.write_bytes(storage.join(out, name), text.encode())
    result = {"run_id": summary["run_id"], "out": out, "pages": sorted(pages),
              "cards": {q: len(v) for q, v in queues.items()},
              "reference_pictures": len(refs), "product_pictures": sum(v is not None for v in products.values()),
              "seconds": round(time.time() - t0, 2)}
    log.info("report.written", **result)
    return result

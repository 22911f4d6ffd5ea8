"""The sweep's stages: pure functions over a batch (a dict of numpy arrays, Ray Data's "numpy"
batch format). Ray actors (logoscan.actors) and the in-process engine call these same functions.

Every batch carries one row per *image* until ``detect``, which emits one row per *region*, plus
one row per image without any region (kind="empty") and per failed image (kind="error"), so the
driver can account for every manifest row: rows in = rows scanned + rows errored.
"""
from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from logoscan import storage
from logoscan.thresholds import Thresholds
from logoscan.config import DetectorConfig, EmbedderConfig, FetchConfig, MatchConfig, OcrConfig, PolicyConfig
from logoscan.images import ImageRejected, decode, jpeg_bytes
# the models (torch, torchvision) are imported inside detect and embed: the fetch tasks run in
# Ray workers of their own, and importing torch there cost more CPU than reading the images

KEYS = ("item_id", "image_id", "image_uri")
PASSENGER = "x_"  # per-image columns a stage carries along unread (the streaming scan's ordinal, content key)
ERR = ("error_stage", "error_type", "error_message")  # "" on rows without an error
# Missing strings are "" inside the pipeline (an all-null column would change type between Ray
# blocks); the output edge turns them back into nulls.


def _obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _error(stage: str, e: BaseException | str, error_type: str | None = None) -> tuple:
    if isinstance(e, BaseException):
        return stage, error_type or type(e).__name__, str(e)[:500]
    return stage, error_type or "Error", e[:500]


def _per_image(fn, items: list) -> list:
    """``fn(items)`` → one result per item. When the batch call fails, each item is tried alone,
    so one bad image (a 1 x 50000 PNG, a crop the model cannot take) fails only itself: its
    result is the exception it raised alone; its neighbours' results are as usual."""
    try:
        out = list(fn(items))
        if len(out) != len(items):
            raise RuntimeError(f"{len(out)} results for {len(items)} inputs")
        return out
    except Exception as batch_error:  # noqa: BLE001
        if len(items) <= 1:
            return [batch_error] * len(items)
        out = []
        for x in items:
            try:
                out.append(list(fn([x]))[0])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out


# ------------------------------------------------------------------ fetch

def check_allowed(uri: str, roots) -> None:
    """Refuse, before any read, a URI outside the allowed roots. The URI's path is resolved
    (symlinks, "..") so neither escapes; local ``roots`` come resolved (sweep.inputs.allowed_roots).
    s3:// roots restrict buckets/prefixes (none given: any s3:// URI). No local root: local paths
    are refused."""
    if storage.is_s3(uri):
        s3_roots = [r for r in roots if storage.is_s3(r)]
        if s3_roots and not any(uri.startswith(r.rstrip("/") + "/") for r in s3_roots):
            raise PermissionError(f"{uri!r} is outside the allowed S3 prefixes {s3_roots}")
        return
    local = [r for r in roots if not storage.is_s3(r)]  # resolved once by sweep.inputs.allowed_roots
    real = os.path.realpath(storage.resolve(uri)[1])
    if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in local):
        raise PermissionError(f"{uri!r} is outside the allowed roots {local or '(none: local paths refused)'}"
                              " (fetch.allowed_roots)")


def readable(uri, roots) -> bool:
    """Whether fetch would try to read ``uri`` (a supported URI inside the allowed roots)."""
    try:
        storage.check_uri(str(uri))
        check_allowed(str(uri), roots)
        return bool(uri)
    except Exception:  # noqa: BLE001 - the fetch stage gives it its error row
        return False


def fetch(batch: dict, cfg: FetchConfig) -> dict:
    """Read each image's bytes. Failures become (stage, error_type, message); nothing raises."""
    n = len(batch["item_id"])
    data, errs = [], []
    given = batch.get("error_stage")  # rows refused before fetch (the manifest's own checks) stay errors
    for i, uri in enumerate(batch["image_uri"]):
        if given is not None and given[i]:
            data.append(b"")
            errs.append(tuple(batch[k][i] for k in ERR))
            continue
        try:
            if uri is None or not str(uri).strip():
                raise ValueError("image_uri is null or empty")
            uri = str(uri)
            storage.check_uri(uri)
            check_allowed(uri, cfg.allowed_roots)
            data.append(storage.read_bytes_retrying(uri, cfg.max_bytes, cfg.retries, cfg.retry_base_s))
            errs.append(None)
        except FileNotFoundError as e:
            data.append(b"")
            errs.append(_error("fetch", e, "NotFound"))
        except Exception as e:  # noqa: BLE001 - every failure is an error row, never an abort
            data.append(b"")
            errs.append(_error("fetch", e))
    out = {k: batch[k] for k in KEYS}
    out.update((k, v) for k, v in batch.items() if k.startswith(PASSENGER))
    out["image_bytes"] = _obj(data)
    for j, k in enumerate(ERR):
        out[k] = _obj([e[j] if e else "" for e in errs])
    assert len(out["image_bytes"]) == n
    return out


# ------------------------------------------------------------------ detect

def detect(batch: dict, model, model_cfg: dict, cfg: DetectorConfig, crop_size: int, crop_pad: float,
           max_pixels: int, device: str = "cpu") -> dict:
    """Decode, detect regions, cut the embedder's crop and a reviewer thumbnail for each region.
    ``crop_size``/``crop_pad`` come from the embedder artifact (preprocessing travels with it)."""
    from logoscan.models.detector import detect_tiled, resolve_precision
    from logoscan.models.embedder import square_crop
    thresh = cfg.score_thresh if cfg.score_thresh is not None else model_cfg["score_thresh"]
    precision = resolve_precision(cfg.precision, device)
    rows = {k: [] for k in (*KEYS, "kind", "rows_of_image", "region", "box", "det_score", "crop", "thumbnail_jpeg",
                            *ERR)}
    source = []  # each output row's input row: passenger columns follow it

    def emit(i, kind, box=(0, 0, 0, 0), score=0.0, crop=None, thumb=b"", error=None, of=1, region=-1):
        for k in KEYS:
            rows[k].append(batch[k][i])
        source.append(i)
        rows["kind"].append(kind)
        rows["rows_of_image"].append(of)  # the driver knows an image is finished when all came back
        rows["region"].append(region)     # the region's place in its image (-1: not a region)
        rows["box"].append(np.asarray(box, np.float32))
        rows["det_score"].append(np.float32(score))
        rows["crop"].append(crop if crop is not None else np.zeros((crop_size, crop_size, 3), np.uint8))
        rows["thumbnail_jpeg"].append(thumb)
        for j, k in enumerate(ERR):
            rows[k].append(error[j] if error else "")

    todo = []
    for i in range(len(batch["image_bytes"])):
        if batch["error_stage"][i]:
            emit(i, "error", error=tuple(batch[k][i] for k in ERR))
        else:
            todo.append(i)
    # decoded a model batch at a time: a Ray Data batch of many large images never sits decoded
    # in memory all at once (memory does not grow with ray.fetch_batch)
    for s in range(0, len(todo), cfg.batch_size):
        images, idx = [], []
        for i in todo[s:s + cfg.batch_size]:
            try:
                images.append(decode(batch["image_bytes"][i], max_pixels))
                idx.append(i)
            except ImageRejected as e:
                emit(i, "error", error=_error("decode", e, "ImageRejected"))
        if not images:
            continue
        for i, im, result in zip(idx, images, _per_image(
                lambda ims: detect_tiled(model, ims, thresh, device=device, batch_size=cfg.batch_size,
                                         precision=precision, **cfg.tiling()), images)):
            if isinstance(result, BaseException):  # this image failed on its own too
                emit(i, "error", error=_error("detect", result))
                continue
            boxes, scores = result
            if len(boxes) == 0:
                emit(i, "empty")
                continue
            try:  # cutting crops and thumbnails can fail on a degenerate image (1 x 50000)
                pil = Image.fromarray(im)
                kept = list(zip(boxes, scores))[:cfg.max_regions]
                cut = [(box, score, np.asarray(square_crop(pil, tuple(box), crop_pad, crop_size), np.uint8),
                        jpeg_bytes(square_crop(pil, tuple(box), 0.1, cfg.thumbnail_px))) for box, score in kept]
            except Exception as e:  # noqa: BLE001 - this image's error row, not its neighbours'
                emit(i, "error", error=_error("detect", e))
                continue
            for r, (box, score, crop, thumb) in enumerate(cut):
                emit(i, "region", box, score, crop, thumb, of=len(cut), region=r)
    out = {k: _obj(v) for k, v in rows.items() if k not in ("box", "det_score", "crop", "rows_of_image", "region")}
    out["rows_of_image"] = np.asarray(rows["rows_of_image"], np.int32)
    out["region"] = np.asarray(rows["region"], np.int16)
    out["box"] = np.stack(rows["box"]) if rows["box"] else np.zeros((0, 4), np.float32)
    out["det_score"] = np.asarray(rows["det_score"], np.float32)
    out["crop"] = np.stack(rows["crop"]) if rows["crop"] else np.zeros((0, crop_size, crop_size, 3), np.uint8)
    for k, v in batch.items():
        if k.startswith(PASSENGER):
            out[k] = np.asarray(v)[np.asarray(source, np.int64)]
    return out


# ------------------------------------------------------------------ embed

def _images_of(batch: dict, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` grouped by image (item_id, image_id), in order."""
    groups: dict[tuple, list[int]] = {}
    for i in rows:
        groups.setdefault((batch["item_id"][i], batch["image_id"][i]), []).append(int(i))
    return [np.asarray(g, np.int64) for g in groups.values()]


def embed(batch: dict, model, model_cfg: dict, cfg: EmbedderConfig, device: str = "cpu") -> dict:
    """An embedding for each region. A batch the model fails on is embedded image by image: an
    image that fails alone turns all its rows into error rows (stage embed); the others embed."""
    from logoscan.models.embedder import embed_crops
    sel = np.flatnonzero(batch["kind"] == "region")
    dim = model_cfg["arch_args"]["embed_dim"]
    out = {k: v for k, v in batch.items() if k != "crop"}
    out["embedding"] = emb = np.zeros((len(batch["kind"]), dim), np.float32)
    if not len(sel):
        return out
    groups = _images_of(batch, sel)
    results = _per_image(lambda gs: np.split(embed_crops(model, model_cfg, [
        Image.fromarray(c) for g in gs for c in batch["crop"][g]], cfg.batch_size, device),
        np.cumsum([len(g) for g in gs])[:-1]), groups)
    for g, r in zip(groups, results):
        if not isinstance(r, BaseException):
            emb[g] = r
            continue
        for k, v in (("kind", "error"), *zip(ERR, _error("embed", r))):  # copied only when an image failed
            if out[k] is batch[k]:
                out[k] = np.asarray(batch[k], dtype=object).copy()
            out[k][g] = v
    return out


# ------------------------------------------------------------------ OCR (optional)

def _split(values: list, sizes: list[int]) -> list[list]:
    values, out, at = list(values), [], 0
    for n in sizes:
        out.append(values[at:at + n])
        at += n
    return out


def read_text(batch: dict, reader, cfg: OcrConfig) -> dict:
    """The text in each region's crop (easyocr), as ``ocr_text``; '' for rows without a region.
    A failure of the OCR model leaves the regions without text (image-only matching), never
    drops them: OCR is an extra feature, not a stage an image can fail."""
    from logoscan.ocr import read_crops
    kinds = batch["kind"]
    sel = np.flatnonzero(kinds == "region")
    text = [""] * len(kinds)
    if len(sel):
        groups = _images_of(batch, sel)
        results = _per_image(lambda gs: _split(read_crops(reader, [c for g in gs for c in batch["crop"][g]],
                                                          cfg.min_confidence), [len(g) for g in gs]), groups)
        failed = [r for r in results if isinstance(r, BaseException)]
        for g, r in zip(groups, results):
            if not isinstance(r, BaseException):
                for i, t in zip(g, r):
                    text[i] = t
        if failed:
            from logoscan.log import get_logger
            get_logger(__name__).warning("ocr.failed", images=len(failed), regions=len(sel),
                                         error=f"{type(failed[0]).__name__}: {failed[0]}"[:300])
    out = dict(batch)
    out["ocr_text"] = _obj(text)
    return out


# ------------------------------------------------------------------ match + decide

MATCH_FIELDS = ("label", "category", "logo_id", "runner_up_label")


def fuse(hits: list[dict], ocr_text: str, weight: float, floor: float) -> list[dict]:
    """Re-rank image neighbours by what the region reads: a candidate whose reference ``text``
    the OCR text resembles moves closer, one it clearly does not resemble moves away:
    distance − weight × (similarity − floor). Candidates without text, and regions where OCR read
    nothing, keep their image distance."""
    from logoscan.textfeat import similarity
    if not ocr_text:
        return hits
    out = []
    for h in hits:
        s = similarity(ocr_text, h.get("text"))
        out.append(h if s is None else {**h, "distance": h["distance"] - weight * (s - floor)})
    return sorted(out, key=lambda h: h["distance"])


def match(batch: dict, matcher, cfg: MatchConfig, ocr: OcrConfig | None = None) -> dict:
    """Nearest references for each region (batched Milvus searches). distance = 1 − cosine, or
    the fused distance when OCR is on (``ocr_text`` in the batch); ``ocr_agreement``: how much
    the text read resembles the nearest reference's ``text`` (NaN where either has none)."""
    from logoscan.textfeat import similarity
    n = len(batch["kind"])
    sel = np.flatnonzero(batch["kind"] == "region")
    fusing = ocr is not None and ocr.enabled and "ocr_text" in batch
    k = max(cfg.top_k, cfg.ocr_candidates) if fusing else cfg.top_k
    out = dict(batch)
    cols = {f: [""] * n for f in MATCH_FIELDS}
    dist = np.full(n, np.nan, np.float32)
    ru = np.full(n, np.nan, np.float32)
    reading = "ocr_text" in batch
    agree = np.full(n, np.nan, np.float32)
    for s in range(0, len(sel), cfg.search_batch):
        part = sel[s:s + cfg.search_batch]
        hits = matcher.search(batch["embedding"][part], k)
        for i, h in zip(part, hits):
            if fusing:
                h = fuse(h, batch["ocr_text"][i], ocr.weight, ocr.floor)
            if not h:
                continue
            cols["label"][i], cols["category"][i], cols["logo_id"][i] = h[0]["label"], h[0]["category"], h[0]["logo_id"]
            dist[i] = h[0]["distance"]
            if reading:
                agree[i] = np.nan if (s := similarity(batch["ocr_text"][i], h[0].get("text"))) is None else s
            other = next((x for x in h[1:] if x["label"] != h[0]["label"]), None)
            if other:
                cols["runner_up_label"][i], ru[i] = other["label"], other["distance"]
    for f, v in cols.items():
        out[f] = _obj(v)
    out["distance"], out["runner_up_distance"], out["ocr_agreement"] = dist, ru, agree
    out.pop("embedding", None)
    return out


def decide(batch: dict, policy: PolicyConfig, thresholds: Thresholds) -> dict:
    """Open-set decision: a region is flagged when its nearest reference is within the threshold
    for that reference (policy pin > calibrated class > calibrated category > default);
    otherwise it is an unknown logo and is not flagged. The margin to the runner-up class is kept
    so reviewers see regions that sit between two classes.

    Where the calibration has an evidence model (logoscan.evidence), every region also gets its
    probability (``evidence_score``) and what each piece of evidence added (``evidence``, JSON);
    with ``policy.decision: evidence`` that model decides (P ≥ its cut; threshold_source
    "evidence"), except in a category whose threshold the policy pins."""
    n = len(batch["kind"])
    thr = np.full(n, np.nan, np.float32)
    queue, source, explained = [""] * n, [""] * n, [""] * n
    flagged = np.zeros(n, bool)
    score = np.full(n, np.nan, np.float32)
    rows = [i for i in np.flatnonzero(batch["kind"] == "region") if batch["category"][i]]
    model, contrib = None, None
    if thresholds.evidence and rows:
        from logoscan.evidence import Model, box_side, features
        model, r = Model.from_dict(thresholds.evidence), np.asarray(rows)
        agree = batch.get("ocr_agreement")
        ev = features(batch["distance"][r], batch["runner_up_distance"][r],
                      agree[r] if agree is not None else np.full(len(r), np.nan),
                      batch["det_score"][r], box_side(batch["box"][r]))
        contrib = model.contributions(ev)  # once per block: the score and the card's explanation
        score[r] = model.probability(ev, contrib)
    for j, i in enumerate(rows):
        cat = batch["category"][i]
        thr[i], source[i] = thresholds.lookup(batch["label"][i], cat)
        queue[i] = policy.for_category(cat).queue or cat
        flagged[i] = batch["distance"][i] <= thr[i]
        if model is not None:
            explained[i] = model.explain(contrib[j])
            if thresholds.decide_by_evidence and source[i] != "policy":
                flagged[i], source[i] = bool(score[i] >= model.cut), "evidence"
    out = dict(batch)
    out["threshold"], out["threshold_source"], out["queue"], out["flagged"] = thr, _obj(source), _obj(queue), flagged
    out["margin"] = (batch["runner_up_distance"] - batch["distance"]).astype(np.float32)
    out["evidence_score"], out["evidence"] = score, _obj(explained)
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t

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
from logoscan.config import DetectorConfig, EmbedderConfig, FetchConfig, MatchConfig, PolicyConfig
from logoscan.images import ImageRejected, decode, jpeg_bytes
from logoscan.models.detector import detect_images
from logoscan.models.embedder import embed_crops, square_crop

KEYS = ("item_id", "image_id", "image_uri")
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


# ------------------------------------------------------------------ fetch

def _check_local(path: str, cfg: FetchConfig) -> None:
    if not cfg.allowed_roots:
        return
    real = os.path.realpath(path[len("file://"):] if path.startswith("file://") else path)
    if not any(real == r or real.startswith(os.path.realpath(r).rstrip("/") + "/") for r in cfg.allowed_roots):
        raise PermissionError(f"{path!r} is outside the allowed roots {list(cfg.allowed_roots)}")


def fetch(batch: dict, cfg: FetchConfig) -> dict:
    """Read each image's bytes. Failures become (stage, error_type, message); nothing raises."""
    n = len(batch["item_id"])
    data, errs = [], []
    for uri in batch["image_uri"]:
        try:
            if uri is None or not str(uri).strip():
                raise ValueError("image_uri is null or empty")
            uri = str(uri)
            storage.check_uri(uri)
            if not storage.is_s3(uri):
                _check_local(uri, cfg)
            data.append(storage.read_bytes(uri, cfg.max_bytes))
            errs.append(None)
        except FileNotFoundError as e:
            data.append(b"")
            errs.append(_error("fetch", e, "NotFound"))
        except Exception as e:  # noqa: BLE001 - every failure is an error row, never an abort
            data.append(b"")
            errs.append(_error("fetch", e))
    out = {k: batch[k] for k in KEYS}
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
    thresh = cfg.score_thresh if cfg.score_thresh is not None else model_cfg["score_thresh"]
    rows = {k: [] for k in (*KEYS, "kind", "box", "det_score", "crop", "thumbnail_jpeg", *ERR)}

    def emit(i, kind, box=(0, 0, 0, 0), score=0.0, crop=None, thumb=b"", error=None):
        for k in KEYS:
            rows[k].append(batch[k][i])
        rows["kind"].append(kind)
        rows["box"].append(np.asarray(box, np.float32))
        rows["det_score"].append(np.float32(score))
        rows["crop"].append(crop if crop is not None else np.zeros((crop_size, crop_size, 3), np.uint8))
        rows["thumbnail_jpeg"].append(thumb)
        for j, k in enumerate(ERR):
            rows[k].append(error[j] if error else "")

    images, idx = [], []
    for i, data in enumerate(batch["image_bytes"]):
        if batch["error_stage"][i]:
            emit(i, "error", error=tuple(batch[k][i] for k in ERR))
            continue
        try:
            images.append(decode(data, max_pixels))
            idx.append(i)
        except ImageRejected as e:
            emit(i, "error", error=_error("decode", e, "ImageRejected"))
    if images:
        try:
            results = detect_images(model, images, thresh, device=device, batch_size=cfg.batch_size)
        except Exception as e:  # noqa: BLE001 - a model failure fails these images, not the run
            results = None
            for i in idx:
                emit(i, "error", error=_error("detect", e))
        if results is not None:
            for i, im, (boxes, scores) in zip(idx, images, results):
                if len(boxes) == 0:
                    emit(i, "empty")
                    continue
                pil = Image.fromarray(im)
                for box, score in list(zip(boxes, scores))[:cfg.max_regions]:
                    crop = np.asarray(square_crop(pil, tuple(box), crop_pad, crop_size), np.uint8)
                    thumb = square_crop(pil, tuple(box), 0.1, cfg.thumbnail_px)
                    emit(i, "region", box, score, crop, jpeg_bytes(thumb))
    out = {k: _obj(v) for k, v in rows.items() if k not in ("box", "det_score", "crop")}
    out["box"] = np.stack(rows["box"]) if rows["box"] else np.zeros((0, 4), np.float32)
    out["det_score"] = np.asarray(rows["det_score"], np.float32)
    out["crop"] = np.stack(rows["crop"]) if rows["crop"] else np.zeros((0, crop_size, crop_size, 3), np.uint8)
    return out


# ------------------------------------------------------------------ embed

def embed(batch: dict, model, model_cfg: dict, cfg: EmbedderConfig, device: str = "cpu") -> dict:
    kinds = batch["kind"]
    sel = np.flatnonzero(kinds == "region")
    dim = model_cfg["arch_args"]["embed_dim"]
    emb = np.zeros((len(kinds), dim), np.float32)
    if len(sel):
        crops = [Image.fromarray(c) for c in batch["crop"][sel]]
        emb[sel] = embed_crops(model, model_cfg, crops, cfg.batch_size, device)
    out = {k: v for k, v in batch.items() if k != "crop"}
    out["embedding"] = emb
    return out


# ------------------------------------------------------------------ match + decide

MATCH_FIELDS = ("label", "category", "logo_id", "runner_up_label")


def match(batch: dict, matcher, cfg: MatchConfig) -> dict:
    """Nearest references for each region (batched Milvus searches). distance = 1 − cosine."""
    n = len(batch["kind"])
    sel = np.flatnonzero(batch["kind"] == "region")
    out = dict(batch)
    cols = {k: [""] * n for k in MATCH_FIELDS}
    dist = np.full(n, np.nan, np.float32)
    ru = np.full(n, np.nan, np.float32)
    for s in range(0, len(sel), cfg.search_batch):
        part = sel[s:s + cfg.search_batch]
        hits = matcher.search(batch["embedding"][part], cfg.top_k)
        for i, h in zip(part, hits):
            if not h:
                continue
            cols["label"][i], cols["category"][i], cols["logo_id"][i] = h[0]["label"], h[0]["category"], h[0]["logo_id"]
            dist[i] = h[0]["distance"]
            other = next((x for x in h[1:] if x["label"] != h[0]["label"]), None)
            if other:
                cols["runner_up_label"][i], ru[i] = other["label"], other["distance"]
    for k, v in cols.items():
        out[k] = _obj(v)
    out["distance"], out["runner_up_distance"] = dist, ru
    out.pop("embedding", None)
    return out


def decide(batch: dict, policy: PolicyConfig, default_threshold: float) -> dict:
    """Open-set decision: a region is flagged when its nearest reference is within its category's
    threshold; otherwise it is an unknown logo and is not flagged."""
    n = len(batch["kind"])
    thr = np.full(n, np.nan, np.float32)
    queue = [""] * n
    flagged = np.zeros(n, bool)
    for i in np.flatnonzero(batch["kind"] == "region"):
        cat = batch["category"][i]
        if not cat:
            continue
        p = policy.for_category(cat)
        t = p.threshold if p.threshold is not None else default_threshold
        thr[i] = t
        queue[i] = p.queue or cat
        flagged[i] = batch["distance"][i] <= t
    out = dict(batch)
    out["threshold"], out["queue"], out["flagged"] = thr, _obj(queue), flagged
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t

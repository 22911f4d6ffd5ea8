"""Match thresholds: the gallery's default from unknown-logo probes at build time, and
per-category / per-class thresholds calibrated from a labelled crop set (`logoscan calibrate`).

The default threshold: the false-accept rate of a distance threshold depends on the gallery it is used with (more
references, more chances for an unknown logo to land near one), so the default threshold is
measured at gallery build time and stored with the gallery version: the distance below which
only ``target_far`` of unknown-logo probes find their nearest reference. The probes ship with the
embedder (embeddings of real logos no gallery holds, of scene crops of brands and invented designs
it never saw, and of logo-free crops), minus any whose name matches a gallery label.

Calibration (`calibrate`): embed labelled crops, find each one's nearest reference exactly as the
sweep does (``stages.match``, with OCR fusion when asked), and choose per category (and class)
the loosest threshold that keeps false accepts within the target. The result is stored in the
collection's properties beside the gallery metadata, with the gallery and embedder versions it
was made for; a rebuilt gallery starts uncalibrated. A sweep applies: a threshold pinned by
policy > the calibrated class > the calibrated category > the default.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from logoscan import storage

from logoscan.thresholds import CALIBRATION_KEY, Thresholds, gallery_labels


# ------------------------------------------------------------------ choosing thresholds

def choose_threshold(d: np.ndarray, correct: np.ndarray, positives: int, crops: int, max_false: float,
                     mode: str, cap: float | None = None) -> dict:
    """Choose the distance threshold for the crops whose nearest class is in one category (or is
    one class). ``d``: their nearest distances; ``correct``: whether that nearest class is theirs;
    ``positives``: labelled crops of this category (class); ``crops``: all labelled crops.
    mode "far": the loosest threshold with at most ``max_false`` wrong accepts; "f1": the
    threshold of best F1 within that. ``cap`` keeps a class threshold no looser than its
    category's. FAR is reported as wrong accepts / all crops."""
    d, correct = np.asarray(d, float), np.asarray(correct, bool)
    order = np.argsort(d, kind="stable")
    ds = d[order]
    tp, fa = np.cumsum(correct[order]), np.cumsum(~correct[order])
    n = len(ds) if cap is None else int(np.searchsorted(ds, cap, side="right"))
    ok = fa[:n] <= max_false + 1e-9
    if mode == "f1":
        prec, rec = tp[:n] / np.maximum(tp[:n] + fa[:n], 1), tp[:n] / max(positives, 1)
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
        j = int(np.argmax(np.where(ok, f1, -1))) if ok.any() else -1
    else:
        j = int(np.flatnonzero(ok)[-1]) if ok.any() else -1
    # the threshold sits midway to the next distance, so it does not hang on one crop's value
    if j < 0:
        t = float(max(ds[0] - 1e-4, 0.0)) if len(ds) else 0.0
    else:
        t = float((ds[j] + (ds[j + 1] if j + 1 < len(ds) else ds[j] + 0.02)) / 2)
    if cap is not None:
        t = min(t, cap)
    k = int(np.searchsorted(ds, t, side="right"))
    tp_t, fa_t = (int(tp[k - 1]), int(fa[k - 1])) if k else (0, 0)
    return {"threshold": round(t, 4), "recall": round(tp_t / max(positives, 1), 4),
            "far": round(fa_t / max(crops, 1), 5),
            "precision": round(tp_t / (tp_t + fa_t), 4) if tp_t + fa_t else None,
            "positives": int(positives), "false_accepts": fa_t}


def choose_thresholds(true_label, true_category, top_label, top_category, distance, target_far: float,
                      mode: str = "far", min_class_crops: int = 20) -> dict:
    """Per-category thresholds (and per-class ones where a class has ≥ ``min_class_crops``
    labelled crops and its share of the budget is at least one false accept) from the decisions on a labelled crop set. ``true_label`` is '' for a crop
    whose class is not in the gallery (unknown logos, look-alikes, non-logo crops).

    The false-accept rate is the share of all crops flagged with a label they do not carry. The
    target is a budget of false accepts (target × crops) shared out by known crops: a category
    may spend its share of it, and a class within it its own share, never looser than its
    category. So the whole set meets the target with every class and category threshold in use."""
    tl, tc = np.asarray(true_label, object), np.asarray(true_category, object)
    pl, pc, d = np.asarray(top_label, object), np.asarray(top_category, object), np.asarray(distance, float)
    correct = (tl == pl) & (tl != "")
    n, known = len(tl), max(int((tl != "").sum()), 1)
    budget = target_far * n
    out = {"target_far": target_far, "mode": mode, "crops": n, "categories": {}, "classes": {}}
    for cat in sorted({c for c in pc if c} | {c for c in tc if c}):
        pos = int((tc == cat).sum())
        r = choose_threshold(d[pc == cat], correct[pc == cat], pos, n, budget * max(pos, 1) / known, mode)
        out["categories"][cat] = r
        for label in sorted(set(tl[tc == cat])):
            n_lab = int((tl == label).sum())
            if n_lab < min_class_crops or budget * n_lab / known < 1:
                continue  # too few crops: one impostor would set the threshold
            rc = choose_threshold(d[pl == label], correct[pl == label], n_lab, n, budget * n_lab / known,
                                  mode, cap=r["threshold"])
            if rc["threshold"] < r["threshold"]:
                out["classes"][label] = rc["threshold"]
    return out


def outcome(true_label, kinds, top_label, top_category, distance, thresholds: Thresholds) -> dict:
    """What a sweep would do with these crops at these thresholds: recall on known classes,
    false accepts over all crops, and the share flagged per kind of crop."""
    d = np.asarray(distance, float)
    t = np.array([thresholds.lookup(lab, cat)[0] if cat else -1.0 for lab, cat in zip(top_label, top_category)])
    return outcome_of(true_label, kinds, top_label, d <= t)


def outcome_of(true_label, kinds, top_label, flagged) -> dict:
    """``outcome`` for crops flagged by any rule (a threshold, the evidence model)."""
    tl, pl = np.asarray(true_label, object), np.asarray(top_label, object)
    flagged = np.asarray(flagged, bool)
    known = tl != ""
    right = (pl == tl) & known
    res = {"crops": int(len(tl)), "known": int(known.sum()),
           "recall_known": round(float((flagged & right)[known].mean()), 4) if known.any() else None,
           "top1_known": round(float(right[known].mean()), 4) if known.any() else None,
           "false_accept_rate": round(float((flagged & ~right).mean()), 5) if len(tl) else None,
           "precision": round(float((flagged & right).sum() / max(flagged.sum(), 1)), 4),
           "by_kind": {}}
    kinds = np.asarray(kinds, object)
    for k in sorted(set(kinds)):
        m = kinds == k
        res["by_kind"][k] = {"crops": int(m.sum()), "flagged": round(float(flagged[m].mean()), 4),
                             "wrongly_flagged": round(float((flagged & ~right)[m].mean()), 4)}
    return res


# ------------------------------------------------------------------ `logoscan calibrate`

def read_labelled_crops(uri: str) -> pa.Table:
    from logoscan.schema import read_validated, validate_labelled_crops
    return read_validated(uri, "labelled crops", validate_labelled_crops)


def load_crops(table: pa.Table, size: int, pad: float, max_pixels: int = 50_000_000, with_sides: bool = False):
    """Each labelled image is the crop as the embedder would see it; with a ``box``, the crop is
    cut around the box as the sweep cuts it around a detection. ``with_sides``: also each
    region's side in pixels (its box's, or the whole image's), for the evidence model."""
    from PIL import Image

    from logoscan.images import decode
    from logoscan.models.embedder import square_crop
    boxes = table.column("box").to_pylist() if "box" in table.column_names else [None] * len(table)
    crops, sides = [], []
    last, im = None, None
    for uri, box in zip(table.column("image_uri").to_pylist(), boxes):
        if uri != last:  # rows of one image (several boxes, --detect's regions) read it once
            last, im = uri, Image.fromarray(decode(storage.read_bytes(uri), max_pixels))
        crops.append(square_crop(im, tuple(box), pad, size) if box else
                     square_crop(im, (0, 0, im.width, im.height), 0.0, size))
        b = box or (0, 0, im.width, im.height)
        sides.append(float(np.sqrt(max(b[2] - b[0], 0) * max(b[3] - b[1], 0))))
    return (crops, np.asarray(sides)) if with_sides else crops


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (x1, y1, x2, y2): torchvision's."""
    import torch
    from torchvision.ops import box_iou
    return box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def detected_crops(table: pa.Table, cfg) -> tuple[pa.Table, dict]:
    """Labelled boxes → the detector's regions on their images, labelled as calibration needs
    them (``CalibrateConfig.detect``): each detection takes the label and kind of the labelled box
    it overlaps most if that IoU ≥ ``detect_iou``, else label '' and kind "detector false
    positive"; it carries its ``det_score``. A row without a box names an image whose every
    detection must not be flagged (a logo-free photo). Also returns how many labelled boxes no
    detection found (they cannot be calibrated on: the sweep would not see them either)."""
    import time

    from logoscan.images import decode
    from logoscan.log import get_logger
    from logoscan.models import default_artifact_path, load_artifact
    from logoscan.models.detector import detect_tiled, resolve_precision
    log = get_logger(__name__)
    model, mcfg = load_artifact(cfg.detector.artifact or default_artifact_path("detector"), inference=True)
    thresh = cfg.detector.score_thresh if cfg.detector.score_thresh is not None else mcfg["score_thresh"]
    rows = table.to_pylist()
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_uri"], []).append(r)
    out, missed, labelled = [], 0, 0
    t0 = last = time.time()
    for n, (uri, rs) in enumerate(by_image.items()):
        if time.time() - last >= 10:  # progress on a long labelled set
            last = time.time()
            log.info("calibrate.detecting", done=n, images=len(by_image), seconds=round(last - t0, 1))
        boxes = [r for r in rs if r.get("box")]
        im = decode(storage.read_bytes(uri), 50_000_000)
        det, scores = detect_tiled(model, [im], thresh, batch_size=cfg.detector.batch_size,
                                   precision=resolve_precision(cfg.detector.precision, "cpu"),
                                   **cfg.detector.tiling())[0]
        det, scores = det[:cfg.detector.max_regions], scores[:cfg.detector.max_regions]
        iou = _iou(det, np.asarray([r["box"] for r in boxes], float).reshape(-1, 4)) if boxes else \
            np.zeros((len(det), 0))
        for k, (box, score) in enumerate(zip(det, scores)):
            j = int(np.argmax(iou[k])) if iou.shape[1] else -1
            hit = boxes[j] if j >= 0 and iou[k, j] >= cfg.detect_iou else None
            out.append({"image_uri": uri, "label": (hit or {}).get("label") or "", "box": [float(v) for v in box],
                        "kind": ((hit or {}).get("kind") or ("known" if (hit or {}).get("label") else "not in gallery"))
                        if hit else "detector false positive", "det_score": float(score)})
        labelled += sum(1 for r in boxes if r.get("label"))
        missed += sum(1 for j, r in enumerate(boxes) if r.get("label") and not (iou[:, j] >= cfg.detect_iou).any())
    from logoscan.schema import BOX
    schema = pa.schema([("image_uri", pa.string()), ("label", pa.string()), ("box", BOX), ("kind", pa.string()),
                        ("det_score", pa.float32())])
    if not out:
        from logoscan.gallery import GalleryError
        raise GalleryError(f"{cfg.crops}: the detector found no region on any of its {len(by_image)} images")
    return pa.Table.from_pylist(out, schema=schema), {"images": len(by_image), "detections": len(out),
                                                      "labelled_boxes": labelled, "labelled_boxes_missed": missed}


def _decisions(vectors: np.ndarray, ocr_text: list[str] | None, matcher, cfg) -> dict:
    from logoscan import stages
    batch = {"kind": np.array(["region"] * len(vectors), object), "embedding": vectors}
    if ocr_text is not None:
        batch["ocr_text"] = np.array(ocr_text, object)
    r = stages.match(batch, matcher, cfg.match, cfg.ocr if ocr_text is not None else None)
    return {k: r[k] for k in ("label", "category", "distance", "runner_up_distance", "ocr_agreement")}


# ------------------------------------------------------------------ the evidence model

def crop_evidence(dec: dict, sides, det_score=None, ocr: bool = False) -> dict:
    """The evidence of labelled crops (logoscan.evidence.FEATURES) from their decisions: OCR
    agreement only in OCR mode, the detector's score only where the crops carry one."""
    from logoscan.evidence import features
    return features(dec["distance"], dec["runner_up_distance"], dec["ocr_agreement"] if ocr else None,
                    det_score, sides)


def choose_cut(model, ev: dict, correct, positives: int, crops: int, max_false: float, mode: str = "far"):
    """The model with the loosest probability cut that keeps false accepts within ``max_false``
    (``choose_threshold`` on 1 − P, as for a distance), and what that cut does on these crops."""
    from dataclasses import replace
    p = model.probability(ev)
    r = choose_threshold(1.0 - p, correct, positives, crops, max_false, mode)
    cut = round(min(max(1.0 - r["threshold"], 0.0), 1.0), 6)
    r.pop("threshold")
    return replace(model, cut=cut), {"cut": cut, **r}


def fit_evidence(ev: dict, correct, known: int, target_far: float, mode: str = "far") -> dict | None:
    """The evidence model of one calibration mode, its cut at the target false-accept rate over
    all crops, and what each piece of evidence adds on these crops (recall at that rate with the
    distance alone, then adding one feature at a time). None when the crops hold fewer than 10
    right and 10 wrong nearest references: nothing to fit."""
    from logoscan.evidence import fit, usable
    correct = np.asarray(correct, bool)
    if not usable(correct):
        return None
    n = len(correct)
    model, r = choose_cut(fit(ev, correct), ev, correct, known, n, target_far * n, mode)
    steps, names = {}, []
    for f in model.features:
        names.append(f)
        ms, rs = choose_cut(fit(ev, correct, names), ev, correct, known, n, target_far * n, mode)
        steps["+".join(names)] = {"recall": rs["recall"], "far": rs["far"], "precision": rs["precision"],
                                  "model": ms.to_dict()}
    return {"model": model.to_dict(), **r, "features_added": steps}


def _plots(out: str, mode: str, dec: dict, tl: np.ndarray, result: dict) -> list[str]:
    from logoscan.plots import BLUE, GREEN, RED, curves, histograms
    hist, curve = [], []
    pl, pc, d = np.asarray(dec["label"], object), np.asarray(dec["category"], object), np.asarray(dec["distance"], float)
    correct = (pl == tl) & (tl != "")
    for cat, r in result["categories"].items():
        m = pc == cat
        hist.append((f"{cat} ({mode})", d[m & correct], d[m & ~correct], r["threshold"]))
        xs = np.linspace(0, max(1.0, float(d[m].max(initial=0))), 101)
        tp = np.array([(d[m & correct] <= x).sum() for x in xs])
        fa = np.array([(d[m & ~correct] <= x).sum() for x in xs])
        curve.append((f"{cat} ({mode})", xs, {"recall": (BLUE, tp / max(r["positives"], 1)),
                                             "precision": (GREEN, tp / np.maximum(tp + fa, 1)),
                                             "false accepts x10": (RED, 10 * fa / max(result["crops"], 1))},
                       r["threshold"]))
    paths = [storage.join(out, f"calibration_{mode}_distances.png"), storage.join(out, f"calibration_{mode}_curves.png")]
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        histograms(f"{tmp}/h.png", hist, "nearest-reference distance of labelled crops whose nearest class is "
                   "theirs (blue) and is not (red: wrong class or not in the gallery); green: the threshold")
        curves(f"{tmp}/c.png", curve, "vs threshold: recall (blue), precision (green), "
               "false accepts x10 as a share of all crops (red); vertical green: the threshold")
        for src, dst in zip((f"{tmp}/h.png", f"{tmp}/c.png"), paths):
            storage.write_bytes(dst, open(src, "rb").read())
    return paths


def calibrate(cfg) -> dict:
    """Thresholds for a gallery from a labelled crop set; stored with the gallery version."""
    import time

    from logoscan.gallery import GalleryError, Matcher
    from logoscan.models import default_artifact_path, load_artifact
    for name in ("crops", "milvus_uri", "out"):
        if not getattr(cfg, name):
            raise GalleryError(f"calibrate needs {name} (flag --{name.replace('_', '-')})")
    t0 = time.time()
    table = read_labelled_crops(cfg.crops)
    detection = None
    if cfg.detect:
        table, detection = detected_crops(table, cfg)
        from logoscan.log import get_logger
        get_logger(__name__).info("calibrate.detected", **detection, seconds=round(time.time() - t0, 1))
    model, emb_cfg = load_artifact(cfg.embedder.artifact or default_artifact_path("embedder"))
    matcher = Matcher(cfg.milvus_uri, cfg.collection, expect_embedder=emb_cfg["version"])
    try:
        return _calibrate(cfg, table, model, emb_cfg, matcher, t0, detection)
    finally:
        matcher.close()


def _calibrate(cfg, table: pa.Table, model, emb_cfg: dict, matcher, t0: float, detection: dict | None = None) -> dict:
    import time
    from datetime import datetime, timezone

    from logoscan.log import get_logger
    log = get_logger(__name__)
    gmeta, cats = matcher.meta, gallery_labels(matcher.client, matcher.collection)
    labels = [x or "" for x in table.column("label").to_pylist()]
    strangers = sorted({x for x in labels if x and x not in cats})
    if strangers:
        log.warning("calibrate.labels_not_in_gallery", count=len(strangers), examples=strangers[:5],
                    note="counted as crops that must not be flagged")
    tl = np.array([x if x in cats else "" for x in labels], object)
    tc = np.array([cats.get(x, "") for x in tl], object)
    # a crop without a kind (null: e.g. appended by `gallery ingest` to a folder of the user's) is
    # grouped by what it is, like every crop of a table without the column
    given = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * len(tl)
    kinds = [k or ("known" if x else "not in gallery") for k, x in zip(given, tl)]
    from logoscan.models.embedder import embed_crops
    crops, sides = load_crops(table, emb_cfg["input_size"], emb_cfg["crop_pad"], with_sides=True)
    det_score = table.column("det_score").to_numpy(zero_copy_only=False) if "det_score" in table.column_names else None
    vectors = embed_crops(model, emb_cfg, crops, cfg.embedder.batch_size)
    log.info("calibrate.embedded", crops=len(crops), seconds=round(time.time() - t0, 1))
    modes = {"image": None}
    ocr_seconds = None
    if cfg.ocr.enabled:
        if "ocr_text" in table.column_names:
            modes["ocr"] = [x or "" for x in table.column("ocr_text").to_pylist()]
        else:
            from logoscan.ocr import load_reader, read_crops
            reader = load_reader(cfg.ocr.languages, cfg.ocr.model_dir)
            t1 = time.time()
            modes["ocr"] = read_crops(reader, [np.asarray(c) for c in crops], cfg.ocr.min_confidence)
            ocr_seconds = time.time() - t1
    decisions = {m: _decisions(vectors, text, matcher, cfg) for m, text in modes.items()}
    result = {"gallery_version": gmeta["gallery_version"], "embedder_version": emb_cfg["version"],
              "collection": cfg.collection, "created_at": datetime.now(timezone.utc).isoformat(),
              "crops_uri": cfg.crops, "crops": len(tl), "known_crops": int((tl != "").sum()),
              "labels_not_in_gallery": len(strangers), "target_far": cfg.target_far, "mode": cfg.mode,
              "detected": detection,
              "min_class_crops": cfg.min_class_crops,
              "ocr": {"weight": cfg.ocr.weight, "floor": cfg.ocr.floor, "min_confidence": cfg.ocr.min_confidence,
                      "ms_per_crop": round(1000 * ocr_seconds / max(len(crops), 1), 1) if ocr_seconds else None},
              "modes": {}, "plots": []}
    for m, dec in decisions.items():
        r = choose_thresholds(tl, tc, dec["label"], dec["category"], dec["distance"], cfg.target_far,
                              cfg.mode, cfg.min_class_crops)
        th = Thresholds.calibrated(gmeta.get("default_threshold", 0.0), r)
        r["outcome"] = outcome(tl, kinds, dec["label"], dec["category"], dec["distance"], th)
        ev = crop_evidence(dec, sides, det_score, ocr=m == "ocr")
        r["evidence"] = fit_evidence(ev, (np.asarray(dec["label"], object) == tl) & (tl != ""),
                                     int((tl != "").sum()), cfg.target_far, cfg.mode)
        result["modes"][m] = r
        result["plots"] += _plots(cfg.out, m, dec, tl, r)
    storage.write_bytes(storage.join(cfg.out, "calibration.json"), json.dumps(result, indent=2).encode())
    if cfg.store:
        matcher.client.alter_collection_properties(matcher.collection, properties={CALIBRATION_KEY: json.dumps(result)})
    log.info("calibrate.done", gallery_version=gmeta["gallery_version"], seconds=round(time.time() - t0, 1),
             **{f"{m}_{c}": v["threshold"] for m, r in result["modes"].items() for c, v in r["categories"].items()})
    return result

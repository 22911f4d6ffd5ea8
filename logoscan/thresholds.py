"""The thresholds a sweep applies, and where they come from: the gallery's default (measured
at build from the unknown-logo probes that ship with the embedder), the calibration stored with
the gallery version (``logoscan calibrate``, logoscan.calibration), and the policy's pins.

Its own module so that the gallery (which measures the default at build) and the stages (which
apply thresholds) need not import the calibration job, which itself uses both.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np

TARGET_FAR = 0.01


def probe_marks(emb_cfg: dict, exclude_labels: set[str], n: int = 300):
    from logoscan.synth.marks import training_marks, unseen_invented
    tc = emb_cfg.get("train_config", {})
    _, held = training_marks(tc.get("seed", 0), tc.get("n_invented", 0), tc.get("n_brands"), tc.get("holdout", 0.1))
    low = {x.lower() for x in exclude_labels}
    brands = [m for m in held if m.extra.get("slug", "").lower() not in low and m.text.lower() not in low]
    half = n // 2
    return brands[:half] + unseen_invented(tc.get("seed", 0) + 99, n - min(half, len(brands)))


def gallery_threshold(model, emb_cfg: dict, gallery: np.ndarray, labels: list[str], seed: int = 11,
                      n: int = 300, target_far: float = TARGET_FAR) -> dict:
    """The distance below which only ``target_far`` of the probes find their nearest reference in
    ``gallery``. The probes come with the embedder artifact (``threshold_probes``: embeddings of
    unknown logos, real and synthetic, and of logo-free crops, measured when it was trained), minus
    any named like a gallery label; nothing is rendered. An artifact without them (made before
    they existed) falls back to rendering ``n`` synthetic probes, which needs the train extra."""
    shipped = emb_cfg.get("threshold_probes") or {}
    if "vectors" in shipped:
        low = {x.lower() for x in labels}
        # a synthetic probe of a brand the gallery holds is no unknown logo to it
        keep = np.array([k != "synthetic" or nm.lower() not in low
                         for nm, k in zip(shipped["names"], shipped["kinds"])], bool)
        probes, kinds = shipped["vectors"][keep], np.array(shipped["kinds"])[keep]
        source = "artifact"
    else:
        from logoscan.models.embedder import embed_crops
        from logoscan.synth.crops import scene_view
        rng = random.Random(seed)
        marks = probe_marks(emb_cfg, set(labels), n)
        probes = embed_crops(model, emb_cfg, [scene_view(rng, m, emb_cfg["input_size"], emb_cfg["crop_pad"])
                                              for m in marks])
        kinds, source = np.array(["synthetic"] * len(marks)), "rendered"
    nearest = (1 - probes @ gallery.T).min(axis=1)
    t = float(np.quantile(nearest, target_far))
    return {"threshold": round(t, 4), "target_far": target_far, "probes": int(len(probes)),
            "probe_source": source,
            "probe_accept_rate": round(float((nearest <= t).mean()), 4),
            "probe_accept_rate_by_kind": {k: round(float((nearest[kinds == k] <= t).mean()), 4)
                                          for k in sorted(set(kinds.tolist()))},
            "probe_nearest_median": round(float(np.median(nearest)), 4)}


# ------------------------------------------------------------------ thresholds a sweep applies

CALIBRATION_KEY = "logoscan.calibration"


@dataclass(frozen=True)
class Thresholds:
    """What a region's distance is compared with: a category pinned by policy, else the
    calibrated threshold of its nearest class, else of its category, else the default."""
    default: float
    by_category: dict = field(default_factory=dict)
    by_class: dict = field(default_factory=dict)
    pinned: dict = field(default_factory=dict)
    # the evidence model calibrated with these thresholds (logoscan.evidence.Model.to_dict()), and
    # whether it decides (policy.decision "evidence") or is only shown on the card ("distance")
    evidence: dict | None = None
    decide_by_evidence: bool = False

    @classmethod
    def calibrated(cls, default: float, mode_result: dict, pinned: dict | None = None,
                   decision: str = "distance") -> "Thresholds":
        """From one mode ("image" or "ocr") of a calibration result."""
        model = (mode_result.get("evidence") or {}).get("model")
        return cls(float(default), {c: r["threshold"] for c, r in mode_result["categories"].items()},
                   dict(mode_result.get("classes", {})), dict(pinned or {}), model,
                   decision == "evidence" and model is not None)

    def lookup(self, label: str, category: str) -> tuple[float, str]:
        if category in self.pinned:
            return self.pinned[category], "policy"
        if label in self.by_class:
            return self.by_class[label], "class"
        if category in self.by_category:
            return self.by_category[category], "category"
        return self.default, "default"


def resolve_thresholds(policy, default: float, calibration: dict | None, mode: str) -> Thresholds:
    pinned = {c: float(policy.for_category(c).threshold) for c in policy.categories
              if policy.for_category(c).threshold is not None}
    cal = (calibration or {}).get("modes", {}).get(mode) if policy.use_calibration else None
    if not cal:
        return Thresholds(float(default), pinned=pinned)
    return Thresholds.calibrated(default, cal, pinned, policy.decision)


def read_calibration(client, collection: str, gallery_meta: dict) -> dict | None:
    """The calibration stored with this gallery version (None if it was never calibrated)."""
    props = client.describe_collection(collection).get("properties") or {}
    if CALIBRATION_KEY not in props:
        return None
    cal = json.loads(props[CALIBRATION_KEY])
    if cal.get("gallery_version") != gallery_meta["gallery_version"] or \
            cal.get("embedder_version") != gallery_meta["embedder_version"]:
        return None  # made for another build of this collection: never apply it
    return cal


def gallery_labels(client, collection: str) -> dict[str, str]:
    """label → category of every reference in the collection."""
    client.load_collection(collection)
    it = client.query_iterator(collection, batch_size=1000, filter='logo_id != ""',
                               output_fields=["label", "category"])
    out = {}
    try:
        while rows := it.next():
            out.update({r["label"]: r["category"] for r in rows})
    finally:
        it.close()
    return out

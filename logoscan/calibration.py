"""A default match threshold for a gallery, from probes of logos that are *not* in it.

The false-accept rate of a distance threshold depends on the gallery it is used with (more
references, more chances for an unknown logo to land near one), so the default threshold is
measured at gallery build time and stored with the gallery version: the distance below which
only ``target_far`` of unknown-logo probes find their nearest reference. The probes are scene
crops of brands held out of the embedder's training and of invented designs it never saw, minus
any whose name matches a gallery label. Labelled per-category calibration replaces this default
(policy thresholds win over it).
"""
from __future__ import annotations

import random

import numpy as np

from logoscan.models.embedder import embed_crops

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
    from logoscan.synth.crops import scene_view
    rng = random.Random(seed)
    marks = probe_marks(emb_cfg, set(labels), n)
    crops = [scene_view(rng, m, emb_cfg["input_size"], emb_cfg["crop_pad"]) for m in marks]
    probes = embed_crops(model, emb_cfg, crops)
    nearest = (1 - probes @ gallery.T).min(axis=1)
    t = float(np.quantile(nearest, target_far))
    return {"threshold": round(t, 4), "target_far": target_far, "probes": len(marks),
            "probe_accept_rate": round(float((nearest <= t).mean()), 4),
            "probe_nearest_median": round(float(np.median(nearest)), 4)}

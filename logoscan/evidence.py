"""A decision from more than the distance: a small logistic model over the evidence a region
carries, fitted by `logoscan calibrate` on the labelled crops and applied by ``stages.decide``.

Evidence of a region whose nearest reference is R (``FEATURES``):

    distance        its (OCR-fused, when OCR is on) distance to R
    margin          how much farther the nearest *other* class is (runner-up − distance; capped,
                    and the cap where there is no runner-up)
    ocr_agreement   similarity of the text OCR read in the region with R's ``text`` (0 where
                    either has none: no text never counts for or against R); OCR mode only
    det_score       the detector's score; only where the labelled crops carry one (a labelled
                    box given by hand has none; `calibrate --detect` calibrates on the
                    detector's own regions, each with its score)
    log_side        log2 of the region's side in pixels (its box's square root of area)

The model gives P(R is the region's logo | evidence). It is fitted on what calibration already
has: each labelled crop's nearest reference, and whether that is the crop's own class (crops of
logos not in the gallery and logo-free crops are the negatives). Its cut is chosen the way a
distance threshold is (``calibration.choose_threshold`` on 1 − P): the most permissive one whose
false accepts stay within the target false-accept rate over all crops.

Why our own ~30 lines of Newton's method instead of a library: five features and a few thousand
crops; scikit-learn would be a runtime dependency for one ``LogisticRegression`` and its pickle
could not travel in the collection's JSON properties. The model is a list of numbers: the
standardisation (mean, scale), one weight per feature and an intercept. Each region's
*contributions* (weight × standardised value, in log-odds) are what the reviewer's card shows:
which piece of evidence pushed it over or under the cut.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

FEATURES = ("distance", "margin", "ocr_agreement", "det_score", "log_side")
MARGIN_CAP = 0.5  # a runner-up this much farther (or none at all) is as clear as it gets


def features(distance, runner_up_distance=None, ocr_agreement=None, det_score=None, side=None) -> dict:
    """The evidence arrays (float64, one value per region) from a decided batch's columns; a
    column that is None is left out."""
    d = np.asarray(distance, float)
    out = {"distance": d}
    if runner_up_distance is not None:
        ru = np.asarray(runner_up_distance, float)
        out["margin"] = np.clip(np.where(np.isnan(ru), MARGIN_CAP, ru - d), -MARGIN_CAP, MARGIN_CAP)
    if ocr_agreement is not None:
        out["ocr_agreement"] = np.nan_to_num(np.asarray(ocr_agreement, float), nan=0.0)
    if det_score is not None:
        out["det_score"] = np.nan_to_num(np.asarray(det_score, float), nan=0.0)
    if side is not None:
        out["log_side"] = np.log2(np.maximum(np.asarray(side, float), 1.0))
    return out


def box_side(boxes) -> np.ndarray:
    """sqrt(area) of x1, y1, x2, y2 boxes."""
    b = np.asarray([list(x) if x is not None else [0, 0, 0, 0] for x in boxes], float).reshape(-1, 4)
    return np.sqrt(np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0))


@dataclass(frozen=True)
class Model:
    features: tuple
    mean: tuple
    scale: tuple
    weights: tuple
    intercept: float
    cut: float = 0.5          # flag when P >= cut

    def _z(self, ev: dict) -> np.ndarray:
        x = np.stack([np.asarray(ev[f], float) for f in self.features], axis=1)
        return (x - np.asarray(self.mean)) / np.asarray(self.scale)

    def contributions(self, ev: dict) -> np.ndarray:
        """Per region and feature: weight × standardised value (log-odds)."""
        return self._z(ev) * np.asarray(self.weights)

    def probability(self, ev: dict, contributions: np.ndarray | None = None) -> np.ndarray:
        c = self.contributions(ev) if contributions is None else contributions
        return _sigmoid(c.sum(axis=1) + self.intercept)

    def explain(self, contributions: np.ndarray) -> str:
        """One region's evidence (its row of ``contributions``) as JSON: the model's cut and each
        feature's contribution in log-odds, largest first (what the reviewer's card shows;
        ``describe`` words it)."""
        order = np.argsort(-np.abs(contributions), kind="stable")
        return json.dumps({"cut": self.cut,
                           "log_odds": {self.features[j]: round(float(contributions[j]), 2) for j in order}})

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "intercept": self.intercept, "cut": self.cut}

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        return cls(tuple(d["features"]), tuple(d["mean"]), tuple(d["scale"]), tuple(d["weights"]),
                   float(d["intercept"]), float(d.get("cut", 0.5)))


WORDS = {"distance": "distance", "margin": "margin to runner-up", "ocr_agreement": "text read vs reference",
         "det_score": "detector score", "log_side": "region size"}


def describe(score, explained: str | None) -> str | None:
    """A flagged row's evidence in words: its probability against the cut, then what pushed it
    up or down (log-odds), e.g. "P 0.93 (flags at ≥ 0.71): distance +1.9 · text read vs reference +2.1"."""
    if not explained or score is None or score != score:
        return None
    e = json.loads(explained)
    parts = " · ".join(f"{WORDS.get(k, k)} {v:+.1f}" for k, v in e["log_odds"].items())
    return f"P {score:.2f} (flags at ≥ {e['cut']:.2f}): {parts}"


def confidence(row: dict) -> float:
    """How clearly a flagged row passed its rule (what review pages sort by): P − cut where the
    evidence model decided it, else threshold − distance."""
    if row.get("threshold_source") == "evidence" and row.get("evidence"):
        return float(row["evidence_score"]) - float(json.loads(row["evidence"])["cut"])
    return float(row["threshold"]) - float(row["distance"])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def fit(ev: dict, correct, names=None, l2: float = 1.0, iterations: int = 50) -> Model:
    """Logistic regression of ``correct`` on the evidence (Newton's method, an L2 penalty on the
    weights, not the intercept, so a feature that does not vary or does not separate stays near 0)."""
    names = tuple(n for n in (names or FEATURES) if n in ev)
    x = np.stack([np.asarray(ev[n], float) for n in names], axis=1)
    y = np.asarray(correct, float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(y), 1))])
    w = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[-1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(z @ w)
        grad = z.T @ (p - y) + pen * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    r = lambda v: tuple(round(float(a), 6) for a in v)  # noqa: E731
    return Model(names, r(mean), r(scale), r(w[:-1]), round(float(w[-1]), 6))


def usable(correct, min_each: int = 10) -> bool:
    """Enough of both outcomes to fit anything."""
    c = np.asarray(correct, bool)
    return int(c.sum()) >= min_each and int((~c).sum()) >= min_each

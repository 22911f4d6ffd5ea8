"""Text similarity of logo classes, for hard-negative pairing (a mark reading "Heinz" must be
pushed away from "Heineken" and from "Heinz Baked Beans").

The score of two (normalised) names is the larger of
  - their normalised Indel similarity, 1 − edit distance / total length ("fing" ~ "ring": 0.75);
  - their Jaro-Winkler similarity, which weights a shared prefix: "heinz" ~ "heineken" 0.86,
    "heinz" ~ "heinz baked beans" 0.86, "google" ~ "google drive" 0.90, "heinz" ~ "nike" 0.48.
Computed with rapidfuzz's C++ ``cdist``: all pairs of a few thousand names in about a second.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np

DEFAULT_MIN_SIM = 0.8


def normalise(name: str) -> str:
    s = "".join(c if c.isalnum() else " " for c in unicodedata.normalize("NFKD", name)
                if not unicodedata.combining(c))
    s = s.encode("ascii", "ignore").decode().lower()
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", s)).strip()


def similarity_matrix(names: list[str], workers: int = 2) -> np.ndarray:
    """float32 [N, N] text similarity in [0, 1]; 0 on the diagonal and for empty names."""
    from rapidfuzz import process
    from rapidfuzz.distance import Indel, JaroWinkler
    norm = [normalise(n) for n in names]
    sim = np.maximum(
        process.cdist(norm, norm, scorer=Indel.normalized_similarity, dtype=np.float32, workers=workers),
        process.cdist(norm, norm, scorer=JaroWinkler.normalized_similarity, dtype=np.float32,
                      workers=workers))
    empty = np.array([not n for n in norm])
    sim[empty, :] = 0
    sim[:, empty] = 0
    np.fill_diagonal(sim, 0)
    return sim


def text_similarity(a: str, b: str) -> float:
    return float(similarity_matrix([a, b], workers=1)[0, 1])


def hard_negative_classes(names: list[str], min_sim: float = DEFAULT_MIN_SIM, k: int = 5,
                          workers: int = 2) -> list[list[int]]:
    """For each class, up to ``k`` other classes whose names are at least ``min_sim`` similar,
    most similar first. Classes with no name (a pure emblem) get none."""
    sim = similarity_matrix(names, workers)
    out = []
    for i in range(len(names)):
        cand = np.flatnonzero(sim[i] >= min_sim)
        cand = cand[np.argsort(-sim[i, cand], kind="stable")][:k]
        out.append([int(j) for j in cand])
    return out

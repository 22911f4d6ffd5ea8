"""Batch sampler for metric learning: m crops per class, classes paired with their hard negatives.

A batch holds ``batch_size // m`` classes with ``m`` views each. Anchor classes are drawn at
random; with probability ``hard_share`` an anchor brings one of its hard-negative classes (text-
similar names) into the same batch, so the hard pairs meet in the loss instead of almost never.
With ``hard_share=0`` it is a plain m-per-class sampler (the ablation's baseline).
"""
from __future__ import annotations

import numpy as np


class ClassBatchSampler:
    def __init__(self, n_classes: int, views_per_class: int, batch_size: int, m: int = 4,
                 neighbours: list[list[int]] | None = None, hard_share: float = 0.0, seed: int = 0):
        if batch_size % m:
            raise ValueError(f"batch_size {batch_size} must be a multiple of m={m}")
        if m > views_per_class:
            raise ValueError(f"m={m} views per class, but only {views_per_class} exist")
        self.n_classes, self.views, self.m = n_classes, views_per_class, m
        self.classes_per_batch = batch_size // m
        self.neighbours = neighbours or [[] for _ in range(n_classes)]
        if len(self.neighbours) != n_classes:
            raise ValueError(f"neighbours lists {len(self.neighbours)} classes, the data {n_classes}")
        self.hard_share = hard_share
        self.rng = np.random.default_rng(seed)

    def batch_classes(self) -> list[int]:
        chosen: list[int] = []
        seen: set[int] = set()
        while len(chosen) < self.classes_per_batch:
            a = int(self.rng.integers(self.n_classes))
            if a in seen:
                continue
            chosen.append(a)
            seen.add(a)
            nb = [b for b in self.neighbours[a] if b not in seen]
            if nb and len(chosen) < self.classes_per_batch and self.rng.random() < self.hard_share:
                b = int(nb[self.rng.integers(len(nb))])
                chosen.append(b)
                seen.add(b)
        return chosen

    def next_batch(self) -> np.ndarray:
        """Indices into a flat [classes × views] array, class-major."""
        out = []
        for c in self.batch_classes():
            v = self.rng.choice(self.views, size=self.m, replace=False)
            out.extend(c * self.views + v)
        return np.asarray(out, dtype=np.int64)

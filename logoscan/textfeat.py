"""Text features for OCR fusion: character n-gram vectors of what a region reads and of what a
reference says (its ``text``), compared by cosine similarity.

Character n-grams tolerate what OCR gets wrong on small, stylised logo text (a stray "[" or an
"l" for an "I") and stray words from the packaging around a logo lower every candidate alike, so
the *ranking* of candidates by text still follows the logo's own lettering.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_KEEP = re.compile(r"[^0-9a-z]+")


def normalize(text: str | None) -> str:
    """Lower case, letters and digits only, words joined by one space."""
    return " ".join(w for w in _KEEP.split((text or "").casefold()) if w)


def ngrams(text: str | None, n: tuple[int, ...] = (2, 3)) -> Counter:
    """Counts of character n-grams of each word, padded with a space on both sides."""
    out: Counter = Counter()
    for word in normalize(text).split():
        w = f" {word} "
        for k in n:
            out.update(w[i:i + k] for i in range(len(w) - k + 1))
    return out


def cosine(a: Counter, b: Counter) -> float:
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def similarity(read: str | None, reference: str | None) -> float | None:
    """Cosine similarity of two texts' n-gram vectors in [0, 1]; None when either has no text
    (at least two letters or digits), so that no text never counts for or against a candidate."""
    if len(normalize(read).replace(" ", "")) < 2 or len(normalize(reference).replace(" ", "")) < 2:
        return None
    return cosine(ngrams(read), ngrams(reference))

"""The metric-learning pieces on their own: text similarity, the batch sampler, the losses."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from logoscan.synth.marks import class_name, wordmark_family
from logoscan.train.losses import HardNegativePairLoss, ProxyMarginLoss, hard_matrix
from logoscan.train.sampling import ClassBatchSampler
from logoscan.train.textsim import hard_negative_classes, normalise, text_similarity


def test_text_similarity_pairs_the_names_a_reviewer_would_confuse():
    assert text_similarity("Heinz", "Heineken") >= 0.8
    assert text_similarity("Heinz", "Heinz Baked Beans") >= 0.8
    assert text_similarity("Google", "Google Drive") >= 0.8
    assert text_similarity("Heinz", "Nike") < 0.6
    assert text_similarity("", "Heinz") == 0.0
    assert normalise("  Café—Noir! ") == "cafe noir" and normalise("Crème") == "creme"


def test_hard_negative_classes_lists_similar_names_only():
    names = ["Heinz", "Heineken", "Heinz Baked Beans", "Nike", "", "Adidas"]
    nb = hard_negative_classes(names, k=5, workers=1)
    assert set(nb[0]) == {1, 2} and nb[3] == [] and nb[4] == [] and nb[5] == []


def test_wordmark_families_are_text_similar():
    rng = random.Random(3)
    for i in range(20):
        fam = wordmark_family(rng, f"f{i}", 3)
        names = [class_name(m) for m in fam]
        assert len({n.lower() for n in names}) == 3
        subs = [m for m in fam if m.extra["design"] == f"f{i}-0"]
        assert len({m.font for m in subs}) == 1 and subs[0].text == names[0]
        nb = hard_negative_classes(names, workers=1)
        assert any(nb), names


def test_sampler_puts_m_views_per_class_and_brings_hard_negatives():
    neighbours = [[1], [0], [], [], [], [], [], []]
    s = ClassBatchSampler(8, views_per_class=5, batch_size=8, m=2, neighbours=neighbours,
                          hard_share=1.0, seed=0)
    together = 0
    for _ in range(200):
        idx = s.next_batch()
        cls = idx // 5
        assert len(idx) == 8 and all((cls == c).sum() == 2 for c in np.unique(cls))
        assert len(np.unique(idx)) == 8
        together += (0 in cls) == (1 in cls) and 0 in cls
    assert together > 20  # with hard_share=1 class 0 never comes without class 1 (and vice versa)
    with pytest.raises(ValueError):
        ClassBatchSampler(8, views_per_class=5, batch_size=9, m=2)
    with pytest.raises(ValueError, match="neighbours lists 2 classes"):
        ClassBatchSampler(8, views_per_class=5, batch_size=8, m=2, neighbours=[[1], [0]])


def test_losses_fall_as_intended():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(8, 16), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    hard = hard_matrix([[1], [], [], []])
    pair = HardNegativePairLoss(hard, margin=0.0)
    same = F.normalize(torch.ones(8, 16), dim=1)  # every crop identical: hard pairs fully violated
    assert pair(same, labels).item() == pytest.approx(1.0, abs=1e-5)
    assert pair(emb, torch.tensor([2, 2, 3, 3, 2, 2, 3, 3])).item() == 0.0  # no hard pair in batch
    proxy = ProxyMarginLoss(4, 16)
    with torch.no_grad():
        proxy.proxies.copy_(torch.eye(4, 16))
    good = F.normalize(torch.eye(4, 16)[labels] + 0.01, dim=1)
    assert proxy(good, labels) < proxy(good, labels.roll(2))


def test_view_cache_is_keyed_by_the_classes_themselves():
    """A change to a mark generator must never reuse views rendered for other classes."""
    import dataclasses

    from logoscan.train.embedder import EmbedderTrainConfig, _cache_key
    fam = wordmark_family(random.Random(0), "f", 3)
    cfg = EmbedderTrainConfig()
    assert _cache_key(cfg, fam) == _cache_key(cfg, list(fam))
    assert _cache_key(cfg, fam) != _cache_key(cfg, [dataclasses.replace(fam[0], text="Other"), *fam[1:]])
    assert _cache_key(cfg, fam) != _cache_key(dataclasses.replace(cfg, views_per_class=5), fam)

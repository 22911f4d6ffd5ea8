"""Metric-learning pieces, one job each (pytorch-metric-learning style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProxyMarginLoss(nn.Module):
    """Each embedding is pulled to its class proxy and pushed from every other proxy:
    softmax over scale·(cos(x, proxy_c) − margin·[c = y]) (normalised-softmax / CosFace form)."""

    def __init__(self, num_classes: int, dim: int, scale: float = 24.0, margin: float = 0.15):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.proxies, dim=1).T
        cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.scale * cos, labels)


class HardNegativePairLoss(nn.Module):
    """Push each crop away from the crops of its class's hard-negative classes in the batch:
    mean over those pairs of relu(cos(x_i, x_j) − margin). ``is_hard`` is a [C, C] bool matrix
    (class a, class b) → b is a hard negative of a (from the text similarity of their names)."""

    def __init__(self, is_hard: torch.Tensor, margin: float = 0.2):
        super().__init__()
        self.register_buffer("is_hard", is_hard.bool(), persistent=False)
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = self.is_hard[labels][:, labels]
        if not mask.any():
            return emb.sum() * 0.0
        cos = emb @ emb.T
        return F.relu(cos[mask] - self.margin).mean()


def hard_matrix(neighbours: list[list[int]]) -> torch.Tensor:
    """[C, C] bool, symmetric: a is a hard negative of b when either lists the other."""
    n = len(neighbours)
    m = torch.zeros(n, n, dtype=torch.bool)
    for a, bs in enumerate(neighbours):
        if bs:
            idx = torch.tensor(bs)
            m[a, idx] = True
            m[idx, a] = True
    return m

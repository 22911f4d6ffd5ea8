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

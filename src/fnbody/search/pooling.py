"""Sequence pooling shared by every encoder: CSN's "weighted_mean" over non-padding positions."""

from __future__ import annotations

import torch
from torch import nn


class WeightedMeanPool(nn.Module):
    """Mean of token vectors weighted by a learned sigmoid gate per token, padding excluded (CSN)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.gate(h)).squeeze(-1) * mask  # (B, T)
        return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)  # (B, C)

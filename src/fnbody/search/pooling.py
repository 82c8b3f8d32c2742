"""Pieces shared by every encoder: CSN's token embedding and its "weighted_mean" pooling over non-padding positions."""

from __future__ import annotations

import torch
from torch import nn


def token_embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """Token embeddings initialised as CSN's (Glorot uniform), padding row 0 kept at zero.

    PyTorch's default N(0, 1) init makes every vector ~40x larger than Glorot's; with CSN's Adam
    steps (lr 0.01 or 5e-4) the embeddings then barely move in an epoch and MRR stays near chance.
    """
    emb = nn.Embedding(vocab_size, dim, padding_idx=0)
    nn.init.xavier_uniform_(emb.weight)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


class WeightedMeanPool(nn.Module):
    """Mean of token vectors weighted by a learned sigmoid gate per token, padding excluded (CSN)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.gate(h)).squeeze(-1) * mask  # (B, T)
        return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)  # (B, C)

    def packed(self, h: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Same pooling over only the real tokens: h (N, C) with rows (N,) naming each token's sequence -> (B, C)."""
        w = torch.sigmoid(self.gate(h)).to(h.dtype)  # (N, 1): under bf16 autocast the gate is bf16
        num = h.new_zeros(batch_size, h.shape[1]).index_add_(0, rows, h * w)  # (B, C)
        den = h.new_zeros(batch_size, 1).index_add_(0, rows, w)  # (B, 1)
        return num / den.clamp_min(1e-6)

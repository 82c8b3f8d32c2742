"""1D-CNN encoder: stacked residual convolutions over token embeddings, weighted-mean pooled (CSN's 1D-CNN)."""

from __future__ import annotations

import torch
from torch import nn

from fnbody.search.pooling import WeightedMeanPool, token_embedding


class CNNEncoder(nn.Module):
    """ids (B, T) -> (B, emb_dim): `num_layers` same-padded tanh convolutions of width `kernel` with residuals."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, dropout: float = 0.1, kernel: int = 16, num_layers: int = 3) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, emb_dim)
        self.drop = nn.Dropout(dropout)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, emb_dim, kernel, padding="same") for _ in range(num_layers))
        self.pool = WeightedMeanPool(emb_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float()  # (B, T)
        h = self.drop(self.embed(ids)).transpose(1, 2)  # (B, C, T)
        m = mask.unsqueeze(1)  # (B, 1, T): zero padding so it never leaks into a real token's window
        for conv in self.convs:
            h = h + self.drop(torch.tanh(conv(h * m)))  # (B, C, T)
        return self.pool(h.transpose(1, 2), mask)  # (B, C)

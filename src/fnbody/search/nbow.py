"""Neural bag of words: token embeddings, dropout, weighted-mean pooling (CSN's NBoW baseline)."""

from __future__ import annotations

import torch
from torch import nn

from fnbody.search.pooling import WeightedMeanPool


class NBoWEncoder(nn.Module):
    """ids (B, T) with 0 = padding -> one vector per sequence (B, emb_dim)."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.pool = WeightedMeanPool(emb_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float()  # (B, T)
        h = self.drop(self.embed(ids))  # (B, T, C)
        return self.pool(h, mask)  # (B, C)

"""Neural bag of words: token embeddings, dropout, weighted-mean pooling (CSN's NBoW baseline)."""

from __future__ import annotations

import torch
from torch import nn

from fnbody.search.pooling import WeightedMeanPool, token_embedding


class NBoWEncoder(nn.Module):
    """ids (B, T) with 0 = padding -> one vector per sequence (B, emb_dim)."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, emb_dim)
        self.drop = nn.Dropout(dropout)
        self.pool = WeightedMeanPool(emb_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # A bag of words needs no positions, so only the real tokens are embedded, dropped out and pooled:
        # code batches are about half padding, and skipping it halves the step time on CPU.
        real = ids != 0  # (B, T)
        rows = real.nonzero()[:, 0]  # (N,) sequence of each real token, row-major
        h = self.drop(self.embed(ids[real]))  # (N, C)
        return self.pool.packed(h, rows, ids.shape[0])  # (B, C)

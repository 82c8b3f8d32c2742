"""Self-attention encoder: a small transformer encoder (CSN used 3 BERT layers) with weighted-mean pooling."""

from __future__ import annotations

import torch
from torch import nn

from fnbody.search.pooling import WeightedMeanPool, token_embedding


class SelfAttentionEncoder(nn.Module):
    """ids (B, T) -> (B, emb_dim): token + learned position embeddings, pre-norm transformer layers, pooled."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, dropout: float = 0.1, num_layers: int = 3,
                 num_heads: int = 8, ffn_dim: int = 512, max_len: int = 512) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, emb_dim)
        self.pos = nn.Embedding(max_len, emb_dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(emb_dim, num_heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(emb_dim)
        self.pool = WeightedMeanPool(emb_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        if T > self.pos.num_embeddings:
            raise ValueError(f"sequence of {T} tokens exceeds max_len {self.pos.num_embeddings}")
        mask = (ids != 0).float()  # (B, T)
        x = self.drop(self.embed(ids) + self.pos(torch.arange(T, device=ids.device)))  # (B, T, C)
        h = self.norm(self.layers(x, src_key_padding_mask=ids == 0))  # (B, T, C)
        return self.pool(h, mask)  # (B, C)

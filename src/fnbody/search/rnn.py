"""Bidirectional RNN encoder (GRU, as the report trains, or LSTM) with weighted-mean pooling."""

from __future__ import annotations

import torch
from torch import nn

from fnbody.search.pooling import WeightedMeanPool, token_embedding


class BiRNNEncoder(nn.Module):
    """ids (B, T) -> (B, emb_dim): embeddings, a bi-GRU/LSTM of emb_dim/2 per direction, pooled."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, dropout: float = 0.1, cell: str = "gru", num_layers: int = 2) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"rnn cell must be 'gru' or 'lstm', got {cell!r}")
        if emb_dim % 2:
            raise ValueError(f"emb_dim must be even for a bidirectional RNN, got {emb_dim}")
        self.embed = token_embedding(vocab_size, emb_dim)
        self.drop = nn.Dropout(dropout)
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(emb_dim, emb_dim // 2, num_layers=num_layers, batch_first=True, bidirectional=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.pool = WeightedMeanPool(emb_dim)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        # On CUDA, cuDNN re-points the RNN weights into one shared buffer, which safetensors refuses to save;
        # giving each weight its own storage keeps checkpoints writable (cuDNN then compacts per call).
        for p in self.rnn.parameters():
            p.data = p.data.clone()
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float()  # (B, T)
        lengths = mask.sum(1).clamp_min(1).long().cpu()
        x = self.drop(self.embed(ids))  # (B, T, C)
        # Packing keeps the backward direction from reading padding first.
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, T, C)
        return self.pool(self.drop(h), mask)  # (B, C)

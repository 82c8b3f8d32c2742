"""A character-level recurrent language model (Karpathy's char-rnn, as in the report's baseline).

Characters go in as an embedding (or one-hot, as the report describes), through a stack of LSTM,
GRU or vanilla RNN layers, and out as logits over the vocabulary. Read top to bottom:
`CharRNNConfig`, then `CharRNN` with `forward(idx, targets) -> (logits, loss)`, `step` (one
recurrent update for decoding) and `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from fnbody.errors import FnbodyError

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # GRU/RNN: h; LSTM: (h, c); each (L, B, H)

IGNORE_INDEX = -1  # targets with this value (padding) do not count in the loss


@dataclass
class CharRNNConfig:
    """Architecture of the char-RNN; defaults are the report's best setting (LSTM, 128 hidden, 2 layers)."""

    vocab_size: int = field(default=0, metadata={"help": "number of symbols (set from the vocabulary)"})
    cell: Literal["lstm", "gru", "rnn"] = field(default="lstm", metadata={"help": "recurrent cell"})
    hidden: int = field(default=128, metadata={"help": "hidden state size"})
    layers: int = field(default=2, metadata={"help": "stacked recurrent layers"})
    input: Literal["embedding", "onehot"] = field(default="embedding", metadata={"help": "embedding lookup, or one-hot vectors as in the report"})
    embedding_dim: int = field(default=128, metadata={"help": "embedding size (input=embedding)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout between layers and before the output"})

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 1 or self.embedding_dim < 1:
            raise ValueError("hidden, layers and embedding_dim must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    """Embedding/one-hot -> stacked RNN -> linear head over characters."""

    def __init__(self, cfg: CharRNNConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 2:
            raise FnbodyError(f"char-RNN needs a vocabulary of at least 2 symbols, got {cfg.vocab_size}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_dim) if cfg.input == "embedding" else None
        in_dim = cfg.embedding_dim if cfg.input == "embedding" else cfg.vocab_size
        self.rnn = _CELLS[cfg.cell](in_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                    dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            return self.embed(idx)  # (B, T, E)
        return F.one_hot(idx, self.cfg.vocab_size).to(self.head.weight.dtype)  # (B, T, V)

    def step(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run `idx` (B, T) from `state`; return logits (B, T, V) and the state after the last char."""
        out, state = self.rnn(self._inputs(idx), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for every position; with `targets` (B, T), the mean per-char cross-entropy."""
        logits, _ = self.step(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue `idx` (B, T) by `max_new_tokens` characters (greedy when temperature is 0); returns (B, T + new)."""
        logits, state = self.step(idx)
        logits = logits[:, -1, :]  # (B, V)
        out = [idx]
        for _ in range(max_new_tokens):
            nxt = pick_next(logits, temperature, top_k, 1.0, generator)  # (B,)
            out.append(nxt[:, None])
            logits, state = self.step(nxt[:, None], state)
            logits = logits[:, -1, :]
        return torch.cat(out, dim=1)


def pick_next(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose one id per row of `logits` (B, V): argmax when temperature is 0, else filtered sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)

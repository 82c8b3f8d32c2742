"""The Generator interface shared by every model kind.

A generator turns prompts (decorators + `def` line + docstring, ending in a newline) into bodies.
`generate` returns, for each prompt, `n` completions already cut at the end of the function
(see `fnbody.generate.stopping`). `stream` yields the text of one completion piece by piece;
closing the iterator stops generation (the server relies on this to cancel on disconnect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass
class GenerationConfig:
    """Decoding settings shared by every generator."""

    n: int = field(default=1, metadata={"help": "completions per prompt"})
    temperature: float = field(default=0.0, metadata={"help": "0 means greedy decoding"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0 = off)"})
    top_k: int = field(default=0, metadata={"help": "sample from the k most likely tokens (0 = off)"})
    max_new_tokens: int = field(default=256, metadata={"help": "hard cap on generated tokens (characters for the char-RNN)"})
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "extra stop strings (OpenAI `stop`)"})
    require_body: bool = field(default=False, metadata={"help": "transformers: never end the function before a body line has begun "
                                                                "(masks end-of-text and unindented tokens until then; instruct models "
                                                                "otherwise close the function at once)"})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):  # NaN fails `>= 0` too
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One generated body."""

    text: str
    finish_reason: str = "stop"  # "stop": the function ended; "length": max_new_tokens reached
    mean_logprob: float | None = None  # mean log-probability per generated token, for ranking
    num_tokens: int = 0


@runtime_checkable
class Generator(Protocol):
    """What `fnbody generate`, `fnbody complete`, evaluation and the server need from a model."""

    name: str  # a short model name, used in sample files and the server's /v1/models

    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        """For each prompt, `cfg.n` completions cut at the end of the function."""
        ...

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """Yield one completion's text in pieces; the pieces join to the `generate` text."""
        ...

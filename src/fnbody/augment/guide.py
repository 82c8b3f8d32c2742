"""Retrieval-guided decoding: the LM's next-token distribution mixed with the continuations of retrieved code.

Retrieved functions never enter the prompt (where the model copies from them and stops early). Instead, at
every step the generated tokens' longest suffix (up to `max_n` tokens, at least `min_n`) is looked up in the
bodies of the prompt's top-k retrieved neighbours, re-indented to the prompt's body; the tokens that follow
it there form a distribution p_ret, and the next token is chosen from (1 - alpha) p_LM + alpha p_ret, as in
kNN-LM (Khandelwal et al., 2020), with n-gram matches in place of a datastore of hidden states. Before the
first body token the neighbours' first tokens are the match. Tokens the decoder masks (require_body) stay masked.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections import Counter, defaultdict
from typing import Callable, Iterator, Sequence

import torch

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig


class NgramTable:
    """Next-token counts after every n-gram (1 <= n <= max_n) of some token sequences, plus their first tokens."""

    def __init__(self, sequences: Sequence[Sequence[int]], max_n: int) -> None:
        self.max_n = max_n
        self.first: Counter = Counter(seq[0] for seq in sequences if seq)
        self.next: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for seq in sequences:
            for i in range(1, len(seq)):
                for n in range(1, min(max_n, i) + 1):
                    self.next[tuple(seq[i - n:i])][seq[i]] += 1

    def continuations(self, generated: Sequence[int], min_n: int = 1) -> Counter | None:
        """Counts of what follows the longest suffix of `generated` seen in the sequences (n >= min_n); None when none is."""
        if not generated:
            return self.first or None
        for n in range(min(self.max_n, len(generated)), min_n - 1, -1):
            found = self.next.get(tuple(generated[-n:]))
            if found:
                return found
        return None


def check_settings(alpha: float, max_n: int, min_n: int) -> None:
    """FnbodyError naming a mixture weight outside (0, 1) or an n-gram range that is empty."""
    if not 0 < alpha < 1:
        raise FnbodyError(f"retrieval-guided decoding: alpha must be in (0, 1), got {alpha}")
    if not 1 <= min_n <= max_n:
        raise FnbodyError(f"retrieval-guided decoding: need 1 <= min_n <= max_n, got {min_n}, {max_n}")


def reindent(body: str, indent: str) -> str:
    """A body moved to `indent` (its common indentation replaced), ending with one newline."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return "".join((indent + ln if ln.strip() else "") + "\n" for ln in lines)


class NeighbourGuide:
    """A `LMGenerator.logits_hook` mixing each row's next-token distribution with its neighbours' continuations."""

    def __init__(self, tokenizer, references: dict[str, Sequence[str]], alpha: float = 0.2, max_n: int = 4, min_n: int = 1) -> None:
        check_settings(alpha, max_n, min_n)
        self.tokenizer = tokenizer
        self.references = references  # prompt -> bodies of its retrieved neighbours
        self.alpha, self.max_n, self.min_n = alpha, max_n, min_n
        self._tables: dict[str, NgramTable] = {}
        self.steps = self.matched = 0

    def table(self, prompt: str) -> NgramTable:
        """The n-gram table of the neighbours of `prompt` (or of the prompt it ends with: retrieved context may precede it)."""
        from fnbody.generate.lm import body_indent

        if prompt not in self._tables:
            key = prompt if prompt in self.references else max((k for k in self.references if prompt.endswith(k)), key=len, default=None)
            indent = body_indent(prompt)
            bodies = [reindent(b, indent) for b in self.references.get(key, ()) if b.strip()]
            ids = self.tokenizer(bodies, add_special_tokens=False)["input_ids"] if bodies else []
            self._tables[prompt] = NgramTable(ids, self.max_n)
        return self._tables[prompt]

    def __call__(self, logits: torch.Tensor, rows: list) -> torch.Tensor:
        probs = torch.softmax(logits, -1)  # (B, V); masked tokens have probability 0
        mixed = False
        for b, row in enumerate(rows):
            # A live row's tokens are a few prompt tokens, then every token generated so far.
            found = self.table(row.prompt).continuations(row.tokens[len(row.tokens) - row.generated:], self.min_n)
            self.steps += 1
            if not found:
                continue
            ids = torch.tensor(list(found), device=logits.device)
            counts = torch.tensor(list(found.values()), dtype=probs.dtype, device=logits.device)
            counts = counts * (probs[b, ids] > 0)  # never revive a masked token
            if counts.sum() <= 0:
                continue
            self.matched += 1
            probs[b] *= 1 - self.alpha
            probs[b, ids] += self.alpha * counts / counts.sum()
            mixed = True
        return torch.log(probs) if mixed else logits


def _hookable(gen):
    """The transformers generator at the bottom of a chain of wrappers (each keeping its inner one as `.base`)."""
    while gen is not None and not hasattr(gen, "logits_hook"):
        gen = getattr(gen, "base", None)
    return gen


class GuidedGenerator:
    """A `Generator` whose transformers model decodes with `NeighbourGuide`: each prompt's top-k retrieved bodies steer it.

    Retrieval is `NeighbourRanker`'s (own repo and the function itself excluded); `base` may be a transformers
    generator or a wrapper around one (retrieved context, for instance).
    """

    def __init__(self, base, index, k: int = 3, alpha: float = 0.2, hybrid: float | None = None,
                 exclude_repo: Callable[[str], str | None] | None = None, max_n: int = 4, min_n: int = 1) -> None:
        from fnbody.augment.rerank import NeighbourRanker

        self.lm = _hookable(base)
        if self.lm is None:
            raise FnbodyError(f"retrieval-guided decoding mixes next-token distributions: it needs a transformers model, "
                              f"not {getattr(base, 'name', type(base).__name__)}")
        check_settings(alpha, max_n, min_n)  # before any retrieval
        self.base = base
        self.retriever = NeighbourRanker(index, k=k, hybrid=hybrid, exclude_repo=exclude_repo)
        self.alpha, self.max_n, self.min_n = alpha, max_n, min_n
        self.name = f"{base.name}+guide{k}"
        count = getattr(base, "count_tokens", None)
        if count is not None:
            self.count_tokens = count  # the server reports prompt usage with it

    @property
    def signature(self) -> str:
        return f"guide:k{self.retriever.k}|alpha:{self.alpha:g}|n:{self.min_n}-{self.max_n}|hybrid:{self.retriever.weight:g}"

    def guide(self, prompts: Sequence[str]) -> NeighbourGuide:
        return NeighbourGuide(self.lm.tokenizer, dict(zip(prompts, self.retriever.references(prompts))),
                              self.alpha, self.max_n, self.min_n)

    @contextlib.contextmanager
    def _hooked(self, guide: NeighbourGuide):
        self.lm.logits_hook = guide
        try:
            yield
        finally:
            self.lm.logits_hook = None

    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        with self._hooked(self.guide(prompts)):
            return self.base.generate(prompts, cfg)

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        with self._hooked(self.guide([prompt])):
            return (yield from self.base.stream(prompt, cfg))  # the base's Completion

"""n-gram novelty: the share of generated token n-grams (n = 4..10) found nowhere in the training split.

Training n-grams are stored as 64-bit hashes (Python's tuple hash, consistent within one process,
which is all a lookup needs) in one set per n, so millions of n-grams fit in memory and hashing
runs at C speed. A collision can only make a novel n-gram look seen, so the reported novelty is
a lower bound (with 64-bit hashes, negligibly so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from fnbody import __version__
from fnbody.errors import FnbodyError
from fnbody.evaluate.bleu import code_tokens
from fnbody.progress import progress

DEFAULT_NS = tuple(range(4, 11))


def ngram_hashes(tokens: Sequence[str], n: int) -> Iterable[int]:
    """Hashes of every n-gram of a token list."""
    toks = tuple(tokens)
    return (hash(toks[i:i + n]) for i in range(len(toks) - n + 1))


class NgramIndex:
    """Hashed n-gram sets of a training corpus, one per n."""

    def __init__(self, ns: Sequence[int] = DEFAULT_NS):
        self.ns = tuple(ns)
        self.sets: dict[int, set[int]] = {n: set() for n in self.ns}
        self.documents = 0

    def add(self, tokens: Sequence[str]) -> None:
        """Add one document's tokens."""
        for n in self.ns:
            self.sets[n].update(ngram_hashes(tokens, n))
        self.documents += 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], ns: Sequence[int] = DEFAULT_NS) -> "NgramIndex":
        """Build from source texts (tokenised with `code_tokens`)."""
        index = cls(ns)
        for text in texts:
            index.add(code_tokens(text))
        return index

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path, ns: Sequence[int] = DEFAULT_NS, max_samples: int | None = None) -> "NgramIndex":
        """Build from the train split's function code (`code`, else prompt + body)."""
        from fnbody.corpus.io import iter_split

        if max_samples is not None and max_samples < 1:  # 0 would compare against nothing: novelty 1.0 everywhere
            raise FnbodyError(f"novelty: the number of train functions must be >= 1 (or None for all), got {max_samples}")
        index = cls(ns)
        for rec in progress(iter_split(corpus_dir, "train", max_samples), desc="train n-grams", unit="fn"):
            index.add(code_tokens(rec.get("code") or rec["prompt"] + rec["body"]))
        if not index.documents:
            raise FnbodyError(f"{corpus_dir}: the train split has no functions to compare with")
        return index


def novelty(generations: Sequence[str], index: NgramIndex) -> tuple[dict, list[dict]]:
    """(summary: per-n share of generated n-grams unseen in training, per-sample novel/total counts)."""
    totals = {n: [0, 0] for n in index.ns}  # n -> [novel, total]
    per_sample = []
    for text in generations:
        toks = code_tokens(text)
        row = {}
        for n in index.ns:
            seen = index.sets[n]
            hs = list(ngram_hashes(toks, n))
            novel = sum(h not in seen for h in hs)
            totals[n][0] += novel
            totals[n][1] += len(hs)
            row[f"novel_{n}"] = novel
            row[f"total_{n}"] = len(hs)
        per_sample.append(row)
    summary = {f"novelty@{n}": (nv / tot if tot else None) for n, (nv, tot) in totals.items()}
    summary["ngrams"] = {str(n): tot for n, (_, tot) in totals.items()}
    summary["train_documents"] = index.documents
    summary["signature"] = (f"novelty|tok:python-tokenize|n:{index.ns[0]}-{index.ns[-1]}|hash:py-tuple-64|"
                            f"samples:{len(generations)}|train_docs:{index.documents}|version:fnbody-{__version__}")
    return summary, per_sample

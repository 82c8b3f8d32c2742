"""Ranking sampled bodies by their agreement with retrieved neighbours (retrieval-guided selection).

Retrieval can steer generation without entering the prompt: sample N bodies from the plain prompt,
retrieve the prompt's top-k training functions from a search index (the prompt's own repo excluded,
as for retrieval-augmented context), and prefer the candidate whose tokens agree most with the
neighbours' bodies (sentence BLEU against them as references). A neighbour's body is its code with
the signature and docstring cut off exactly as the corpus builder cuts them. Used by
`ExecutionCheckedGenerator(ranker=...)`, where passing the docstring's examples still comes first.
"""

from __future__ import annotations

from typing import Callable, Sequence

from fnbody.errors import FnbodyError


def hit_body(hit: dict) -> str:
    """The body of a retrieved function (its code after the docstring), or its whole code when that cannot be cut."""
    from fnbody.corpus.extract import functions_from_source

    code = hit.get("code") or ""
    try:
        funcs = functions_from_source(code)
    except (SyntaxError, ValueError):
        return code
    return funcs[0].body if funcs else code


class NeighbourRanker:
    """Scores candidate bodies by sentence BLEU against the bodies of each prompt's top-k retrieved functions."""

    def __init__(self, index, k: int = 3, hybrid: float | None = None,
                 exclude_repo: Callable[[str], str | None] | None = None) -> None:
        if k < 1:
            raise FnbodyError(f"retrieved neighbours (--rank-k / --guide-k): k must be >= 1, got {k}")
        from fnbody.search.index import check_hybrid

        if hybrid is not None:
            check_hybrid(index, hybrid)
        self.index = index
        self.k = k
        self.hybrid = hybrid  # None: the index's own recorded weight (dense only when it has none)
        self.exclude_repo = exclude_repo

    @property
    def weight(self) -> float:
        """The BM25 fusion weight retrieval uses: the one given, else the index's recorded one (0: dense only)."""
        return self.hybrid if self.hybrid is not None else getattr(self.index, "default_hybrid", 0.0)

    @property
    def signature(self) -> str:
        return f"neighbours:k{self.k}|sentence-bleu|hybrid:{self.weight:g}"

    def references(self, prompts: Sequence[str], exclude_repos: Sequence[str | None] | None = None) -> list[list[str]]:
        """For each prompt, the bodies of its top-k retrieved functions, best first (own repo excluded)."""
        from fnbody.augment.prompt import query_text
        from fnbody.augment.rag import FETCH_EXTRA, is_same_function, query_all

        if exclude_repos is None:
            exclude_repos = [self.exclude_repo(p) if self.exclude_repo else None for p in prompts]
        fetched = query_all(self.index, [query_text(p) for p in prompts], min(self.k + FETCH_EXTRA, len(self.index)), self.hybrid)
        return [[hit_body(h) for h in hits if not (repo and h.get("repo") == repo) and not is_same_function(h.get("code", ""), p)][:self.k]
                for p, hits, repo in zip(prompts, fetched, exclude_repos)]

    @staticmethod
    def agreement(body: str, references: Sequence[str]) -> float:
        """How much `body` agrees with the neighbours' bodies: sentence BLEU x100 (0 without neighbours)."""
        from fnbody.evaluate.bleu import sentence_bleu

        return sentence_bleu(body, references)

"""Retrieval-augmented generation: similar training functions go before the prompt as context.

For each prompt the search index is queried with the docstring (else the function name), by its dense
vectors alone or, with `hybrid` W > 0, by z(dense) + W * z(BM25) (an index built with --bm25); the best
`k` functions that survive the leakage filters are written, as plain code under a one-line comment
naming their source, in front of the prompt. The most similar function comes last, nearest the
prompt. Context goes first because both decoders depend on it: the LM generator cuts over-long
prompts from the left (so context is what gets cut, never the signature), and the end-of-body rule
follows the prompt's LAST `def` (so context functions cannot confuse it). The whole context must fit
the model's budget: for an LM, its context window minus the generation room and the prompt
itself, counted in the model's own tokens; otherwise a character budget. A function that does not
fit is skipped whole (half a function teaches nothing) and the next one is tried.

Leakage filters: functions from an excluded repo (evaluation excludes the prompt's own repo, so a
test function's siblings cannot hand it its answer), functions whose code starts with the prompt
itself (the function being written, or a copy of it), and repeats of a function already taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig, Generator

DEFAULT_BUDGET_CHARS = 2000  # for generators without a tokenizer (the char-RNN): about 500 tokens' worth
DEFAULT_BUDGET_TOKENS = 1024  # context + prompt cap when none is given: long contexts cost more than they help on CPU
FETCH_EXTRA = 16  # hits fetched beyond k, so the filters rarely leave fewer than k


def context_header(hit: dict) -> str:
    """The comment line naming where a context function comes from."""
    where = "/".join(str(x) for x in (hit.get("repo"), hit.get("path")) if x)
    return f"# Related function{f' from {where}' if where else ''}:\n"


def _normalise(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


def is_same_function(hit_code: str, prompt: str) -> bool:
    """True when a retrieved function is the prompt's own function (its code begins with the prompt)."""
    p = _normalise(prompt)
    return bool(p) and _normalise(hit_code).startswith(p)


class TokenBudget:
    """A `fits` test that counts each piece's tokens once: context functions + prompt within `limit` tokens.

    Checking a budget by tokenising `context + prompt` for every candidate costs one tokenisation of
    the whole text per try (6 ms per training function measured: most of a retrieval-augmented
    data build). Token counts of joined texts are nearly additive, so each piece (a rendered context
    function, the prompt) is counted once and cached, and `slack` tokens per join cover merges across
    a boundary. It may refuse a context a token or two early, never admit one much over the limit.
    """

    def __init__(self, count: Callable[[str], int], limit: int, slack: int = 2, max_cached: int = 200_000,
                 count_many: Callable[[list[str]], list[int]] | None = None) -> None:
        self.count, self.limit, self.slack, self.max_cached = count, limit, slack, max_cached
        self.count_many = count_many  # one tokenizer call for many pieces (1.5x faster single-threaded, more with threads)
        self._counts: dict[str, int] = {}

    def prefetch(self, pieces: Sequence[str]) -> None:
        """Count the uncached `pieces` in one `count_many` call (a no-op without it); later checks hit the cache."""
        if self.count_many is None:
            return
        todo = list(dict.fromkeys(p for p in pieces if p not in self._counts))
        if not todo:
            return
        if len(self._counts) + len(todo) > self.max_cached:
            self._counts.clear()
        self._counts.update(zip(todo, self.count_many(todo)))

    def tokens(self, piece: str) -> int:
        n = self._counts.get(piece)
        if n is None:
            if len(self._counts) >= self.max_cached:
                self._counts.clear()
            n = self._counts[piece] = self.count(piece)
        return n

    def pieces(self, pieces: Sequence[str]) -> bool:
        """Whether the concatenation of `pieces` fits."""
        return sum(self.tokens(p) for p in pieces) + self.slack * max(len(pieces) - 1, 0) <= self.limit

    def __call__(self, text: str) -> bool:
        return self.tokens(text) <= self.limit


def build_context(hits: Sequence[dict], prompt: str, k: int, fits: Callable[[str], bool]) -> tuple[str, list[dict]]:
    """Up to `k` of `hits` (best first) as context text, each kept only if `fits(context + prompt)`.

    `fits` may be a `TokenBudget`, which is asked about the pieces (each counted once) instead of the joined text.
    Returns (context, used hits best first). The context lists the best hit last, nearest the prompt.
    """
    used: list[dict] = []
    seen: set[str] = set()
    by_pieces = getattr(fits, "pieces", None)
    for hit in hits:
        if len(used) >= k:
            break
        code = (hit.get("code") or "").strip("\n")
        key = _normalise(code)
        if not key or key in seen or is_same_function(code, prompt):
            continue
        blocks = [_block(h) for h in reversed([*used, hit])]
        if by_pieces([*blocks, prompt]) if by_pieces else fits("".join(blocks) + prompt):
            used.append(hit)
            seen.add(key)
    return _render(used), used


def _block(hit: dict) -> str:
    return context_header(hit) + (hit.get("code") or "").strip("\n") + "\n\n\n"


def _render(hits: Sequence[dict]) -> str:
    return "".join(_block(h) for h in reversed(hits))


@dataclass
class Retrieval:
    """What was retrieved for one prompt (kept for diagnostics)."""

    query: str
    context: str
    hits: list[dict] = field(default_factory=list)  # used hits, best first: repo, path, func_name, score
    excluded_repo: str | None = None


class RetrievalAugmentedGenerator:
    """A `Generator` that prefixes each prompt with its top-k retrieved training functions."""

    def __init__(self, base: Generator, index, k: int = 2, exclude_repo: Callable[[str], str | None] | None = None,
                 budget_tokens: int = 0, budget_chars: int = 0, hybrid: float = 0.0) -> None:
        if k < 1:
            raise FnbodyError(f"rag k must be >= 1, got {k}")
        if budget_tokens < 0 or budget_chars < 0:
            raise FnbodyError("rag budgets must be >= 0 (0 = the model's own limit)")
        from fnbody.search.index import check_hybrid

        check_hybrid(index, hybrid)  # at construction: a bad weight or an index without BM25 fails before any generation
        self.base = base
        self.index = index
        self.k = k
        self.exclude_repo = exclude_repo
        self.budget_tokens = budget_tokens
        self.budget_chars = budget_chars
        self.hybrid = hybrid  # > 0: rank retrieval hits by dense + hybrid * BM25 (z-scored), see SearchIndex.query
        self.name = f"{base.name}+rag{k}"
        self.last_retrievals: list[Retrieval] = []
        count = getattr(base, "count_tokens", None)
        if count is not None:
            self.count_tokens = count  # the server reports prompt usage with it

    # ----- budget -------------------------------------------------------------------------------
    def _tokens(self, text: str) -> int | None:
        tok = getattr(self.base, "tokenizer", None)
        if tok is None:
            return None
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def fits(self, max_new_tokens: int) -> Callable[[str], bool]:
        """A test of whether context + prompt fits this generator's budget for `max_new_tokens`."""
        max_context = getattr(self.base, "max_context", None)
        if getattr(self.base, "tokenizer", None) is not None and max_context:
            # Mirror LMGenerator._encode_prompts: EOS + prompt must fit beside the generation room.
            room = max_context - min(max_new_tokens, max_context // 2) - 1
            room = min(room, self.budget_tokens or DEFAULT_BUDGET_TOKENS)
            return TokenBudget(self._tokens, room)
        if self.budget_tokens and getattr(self.base, "tokenizer", None) is not None:
            return TokenBudget(self._tokens, self.budget_tokens)
        limit = self.budget_chars or DEFAULT_BUDGET_CHARS
        return lambda text: len(text) <= limit

    # ----- retrieval ----------------------------------------------------------------------------
    def retrieve(self, prompts: Sequence[str], max_new_tokens: int = 256, exclude_repos: Sequence[str | None] | None = None) -> list[Retrieval]:
        """Context for each prompt (repo exclusion from `exclude_repos`, else from `exclude_repo(prompt)`)."""
        from fnbody.augment.prompt import query_text

        if exclude_repos is None:
            exclude_repos = [self.exclude_repo(p) if self.exclude_repo else None for p in prompts]
        queries = [query_text(p) for p in prompts]
        fetched = query_all(self.index, queries, min(self.k + FETCH_EXTRA, len(self.index)), self.hybrid)
        fits = self.fits(max_new_tokens)
        out = []
        for prompt, query, hits, repo in zip(prompts, queries, fetched, exclude_repos):
            allowed = [h for h in hits if not (repo and h.get("repo") == repo)]
            context, used = build_context(allowed, prompt, self.k, fits)
            out.append(Retrieval(query=query, context=context, excluded_repo=repo,
                                 hits=[{k: h.get(k) for k in ("repo", "path", "func_name", "score")} for h in used]))
        return out

    # ----- the Generator interface --------------------------------------------------------------
    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        """Bodies for `prompts`, each generated after its retrieved context (only the body is returned)."""
        self.last_retrievals = self.retrieve(prompts, cfg.max_new_tokens)
        return self.base.generate([r.context + p for r, p in zip(self.last_retrievals, prompts)], cfg)

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """Stream one body generated after the prompt's retrieved context."""
        self.last_retrievals = self.retrieve([prompt], cfg.max_new_tokens)
        return (yield from self.base.stream(self.last_retrievals[0].context + prompt, cfg))  # the base's Completion


def query_all(index, queries: Sequence[str], k: int, hybrid: float | None = 0.0) -> list[list[dict]]:
    """`index.query_many` where empty queries (nothing searchable in the prompt) get no hits instead of an error (hybrid None: the index's weight)."""
    live = [i for i, q in enumerate(queries) if q]
    out: list[list[dict]] = [[] for _ in queries]
    for i, hits in zip(live, index.query_many([queries[i] for i in live], k, hybrid=hybrid) if live else []):
        out[i] = hits
    return out


def repo_lookup(rows: Sequence[dict]) -> Callable[[str], str | None]:
    """`exclude_repo` for prompt rows that carry `repo` (corpus rows do): prompt -> its repo."""
    by_prompt = {r["prompt"]: r.get("repo") for r in rows if r.get("repo")}
    return by_prompt.get


def training_contexts(records: Sequence[dict], index, k: int, fits: Callable[[str], bool], batch: int = 256,
                      hybrid: float = 0.0) -> list[str]:
    """Retrieved context for each training record, excluding the function itself and its whole repo; `hybrid` as in generation."""
    from fnbody.augment.prompt import query_text
    from fnbody.progress import progress

    out: list[str] = []
    fetch = min(k + FETCH_EXTRA, len(index))
    prefetch = getattr(fits, "prefetch", None)
    for s in progress(range(0, len(records), batch), desc="retrieve context", total=(len(records) + batch - 1) // batch, unit="batch"):
        part = records[s:s + batch]
        hits = query_all(index, [query_text(r["prompt"]) for r in part], fetch, hybrid)
        allowed_all = []
        for r, hs in zip(part, hits):
            own = _normalise(r.get("code") or r["prompt"] + r.get("body", ""))
            allowed_all.append([h for h in hs if h.get("repo") != r.get("repo") and _normalise(h.get("code") or "") != own])
        if prefetch is not None:  # the pieces build_context will most likely count: each prompt and its first hits' blocks
            prefetch([p for r, allowed in zip(part, allowed_all) for p in (r["prompt"], *(_block(h) for h in allowed[:k + 2]))])
        out.extend(build_context(allowed, r["prompt"], k, fits)[0] for r, allowed in zip(part, allowed_all))
    return out

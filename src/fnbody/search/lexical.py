"""Lexical code search: Okapi BM25 over code subtokens, with numpy postings.

A function's code tokens are split into subtokens (identifiers cut at `_`, punctuation and camelCase, lower-cased),
and a query's words the same way. `BM25Index` keeps CSR postings (per term: the rows holding it and how often), each
row's length and one IDF per term, so a query costs one `np.bincount` over the postings of its terms.

IDF: log(1 + (N - df + 0.5) / (df + 0.5)) over a reference collection of N functions (the train split for the CSN
protocol, or the indexed rows themselves); a term the reference never saw gets log(1 + N), as
benchmarks/search_fusion.py measured it. A handful of English stop words are dropped from queries.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fnbody.errors import FnbodyError

BM25_FORMAT_VERSION = 1
BM25_ARRAYS = "bm25.npz"
BM25_INFO = "bm25.json"
K1, B = 1.2, 0.75
STOP = frozenset("the a an of to and or in is for be by with this that it on as are from if at".split())
_SPLIT = re.compile(r"[_\W]+")
_PIECE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def subtokens(tokens: Iterable[str]) -> list[str]:
    """Identifier pieces: split on `_`/punctuation and camelCase, lower-cased (`getHTTPResponse2` -> get, http, response, 2)."""
    return [w.lower() for tok in tokens for part in _SPLIT.split(tok) for w in _PIECE.findall(part)]


def query_terms(tokens: Iterable[str]) -> list[str]:
    """The distinct non-stop-word subtokens of a query, in first-seen order."""
    return [w for w in dict.fromkeys(subtokens(tokens)) if w not in STOP]


def check_weight(weight: float) -> float:
    """`weight` when it is a usable fusion weight (finite, >= 0); FnbodyError otherwise."""
    if not (weight >= 0 and math.isfinite(weight)):
        raise FnbodyError(f"hybrid weight must be a finite number >= 0, got {weight}")
    return weight


def lexical_signature(k1: float = K1, b: float = B) -> str:
    """The signature piece naming this lexical ranker, e.g. `lex:bm25-k1.2-b0.75`."""
    return f"lex:bm25-k{k1:g}-b{b:g}"


class IDF:
    """Inverse document frequencies of subtokens over a reference collection of code-token lists."""

    def __init__(self, df: dict[str, int], n: int) -> None:
        self.df, self.n = df, n

    @classmethod
    def from_documents(cls, code_token_lists: Iterable[Sequence[str]]) -> "IDF":
        """Document frequencies of every subtoken of `code_token_lists` (one list per function)."""
        df: collections.Counter = collections.Counter()
        n = 0
        for code in code_token_lists:
            df.update(set(subtokens(code)))
            n += 1
        return cls(dict(df), n)

    def weights(self, terms: Sequence[str]) -> np.ndarray:
        """(len(terms),) float64 IDF of each term; log(1 + N) for a term the reference never saw."""
        unseen = math.log(1 + self.n)
        return np.array([math.log(1 + (self.n - c + 0.5) / (c + 0.5)) if (c := self.df.get(t)) else unseen for t in terms],
                        dtype=np.float64)


class BM25Index:
    """BM25 over indexed functions: `scores(query_tokens)` -> (N,) float32 for every row, by postings accumulation."""

    def __init__(self, terms: list[str], indptr: np.ndarray, doc_ids: np.ndarray, tf: np.ndarray, doc_len: np.ndarray,
                 idf: np.ndarray, *, k1: float = K1, b: float = B, idf_source: str = "indexed rows", idf_n: int = 0) -> None:
        self.terms, self.indptr, self.doc_ids, self.tf, self.doc_len, self.idf = terms, indptr, doc_ids, tf, doc_len, idf
        self.k1, self.b, self.idf_source, self.idf_n = k1, b, idf_source, idf_n
        self.term_id = {t: i for i, t in enumerate(terms)}
        lens = doc_len.astype(np.float64)
        avg = float(lens.mean()) if len(lens) and lens.mean() > 0 else 1.0
        # Per-posting BM25 weight precomputed: a query then only gathers and sums.
        norm = k1 * (1 - b + b * lens / avg)
        self._weight = tf * (k1 + 1) / (tf + norm[doc_ids])

    @classmethod
    def build(cls, code_token_lists: Sequence[Sequence[str]], *, idf: IDF | None = None, idf_source: str = "",
              k1: float = K1, b: float = B) -> "BM25Index":
        """Index one code-token list per row; IDF from `idf` (a reference collection) or, when None, from these rows."""
        counts = [collections.Counter(subtokens(code)) for code in code_token_lists]
        if idf is None:
            idf = IDF(dict(collections.Counter(t for c in counts for t in c)), len(counts))
            idf_source = idf_source or "indexed rows"
        vocab: dict[str, int] = {}
        rows, term_ids, freqs = [], [], []
        for row, c in enumerate(counts):
            rows += [row] * len(c)
            term_ids += [vocab.setdefault(t, len(vocab)) for t in c]
            freqs += c.values()
        term_ids_a = np.array(term_ids, dtype=np.int64)
        order = np.argsort(term_ids_a, kind="stable")  # postings grouped by term, rows ascending within a term
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_ids_a, minlength=len(vocab)), out=indptr[1:])
        terms = list(vocab)
        return cls(terms, indptr, np.array(rows, dtype=np.int32)[order], np.array(freqs, dtype=np.float64)[order],
                   np.array([sum(c.values()) for c in counts], dtype=np.float32), idf.weights(terms),
                   k1=k1, b=b, idf_source=idf_source, idf_n=idf.n)

    def __len__(self) -> int:
        return len(self.doc_len)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """(N,) float32 BM25 score of every row for a query's tokens (words or identifiers; stop words dropped)."""
        ids = [i for t in query_terms(query_tokens) if (i := self.term_id.get(t)) is not None]
        if not ids:
            return np.zeros(len(self), dtype=np.float32)
        spans = [np.arange(self.indptr[i], self.indptr[i + 1]) for i in ids]
        post = np.concatenate(spans)
        w = self._weight[post] * np.repeat(self.idf[ids], [len(s) for s in spans])
        return np.bincount(self.doc_ids[post], weights=w, minlength=len(self)).astype(np.float32)

    def save(self, folder: str | Path) -> None:
        """Write bm25.npz (arrays, no pickles) and bm25.json (params, format version) into `folder`, each atomically."""
        from fnbody.io import atomic_open, write_json

        folder = Path(folder)
        terms = np.frombuffer("\n".join(self.terms).encode("utf-8"), dtype=np.uint8)  # subtokens never hold a newline
        with atomic_open(folder / BM25_ARRAYS, "wb", encoding=None) as f:
            np.savez(f, terms=terms, indptr=self.indptr, doc_ids=self.doc_ids, tf=self.tf.astype(np.int32),
                     doc_len=self.doc_len, idf=self.idf)
        write_json(folder / BM25_INFO, {"format_version": BM25_FORMAT_VERSION, "ranker": "bm25", "k1": self.k1, "b": self.b,
                                        "idf_source": self.idf_source, "idf_n": self.idf_n, "rows": len(self),
                                        "terms": len(self.terms), "postings": int(len(self.doc_ids))})

    @classmethod
    def load(cls, folder: str | Path) -> "BM25Index":
        """Read what `save` wrote; FnbodyError naming the file when it is missing, another format or inconsistent."""
        from fnbody.io import check_format_version, read_json

        folder = Path(folder)
        for name in (BM25_INFO, BM25_ARRAYS):
            if not (folder / name).exists():
                raise FnbodyError(f"{folder}: BM25 channel is missing {name}")
        info = check_format_version(read_json(folder / BM25_INFO), BM25_FORMAT_VERSION, folder / BM25_INFO, "BM25")
        try:
            with np.load(folder / BM25_ARRAYS, allow_pickle=False) as z:
                a = {k: z[k] for k in ("terms", "indptr", "doc_ids", "tf", "doc_len", "idf")}
        except (OSError, ValueError, KeyError) as e:
            raise FnbodyError(f"{folder / BM25_ARRAYS}: cannot read the BM25 arrays ({e})") from None
        terms = a["terms"].tobytes().decode("utf-8").split("\n") if len(a["terms"]) else []
        if (len(terms) != info.get("terms") or len(a["indptr"]) != len(terms) + 1 or len(a["idf"]) != len(terms)
                or len(a["doc_ids"]) != a["indptr"][-1] or len(a["tf"]) != len(a["doc_ids"]) or len(a["doc_len"]) != info.get("rows")):
            raise FnbodyError(f"{folder}: BM25 files disagree with {BM25_INFO} ({len(terms)} terms, {len(a['doc_len'])} rows)")
        return cls(terms, a["indptr"], a["doc_ids"], a["tf"].astype(np.float64), a["doc_len"], a["idf"],
                   k1=info["k1"], b=info["b"], idf_source=info.get("idf_source", ""), idf_n=info.get("idf_n", 0))


def pair_scores(queries: Sequence[Sequence[str]], codes: Sequence[Sequence[str]], idf: IDF, *, k1: float = K1, b: float = B) -> np.ndarray:
    """(len(queries), len(codes)) BM25 scores of query-token lists against code-token lists (CSN-protocol batches)."""
    index = BM25Index.build(codes, idf=idf, k1=k1, b=b)
    return np.stack([index.scores(q) for q in queries]) if len(queries) else np.zeros((0, len(codes)), np.float32)


def zscore(s: np.ndarray) -> np.ndarray:
    """Scores standardised per row (last axis): (s - mean) / (std + 1e-9), so a flat row stays 0."""
    s = np.asarray(s, dtype=np.float64)
    return (s - s.mean(-1, keepdims=True)) / (s.std(-1, keepdims=True) + 1e-9)


def fuse(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """Hybrid score per row: z(dense) + weight * z(lexical), each standardised over its last axis."""
    return zscore(dense) + weight * zscore(lexical)

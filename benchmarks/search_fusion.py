"""Lexical vs dense code search, and their fusion: BM25, a trained search run, and z-score fusion of both.

The CSN protocol (consecutive batches of 1000 test pairs, last partial batch dropped) scores three rankers:
- the dense run (any `fnbody train search` run: minilm, nbow, ...): the baseline of this benchmark;
- BM25 (k1 1.2, b 0.75) of the docstring's subtokens against the code's subtokens (identifiers split on
  `_` and camelCase, lower-cased), with IDF from the train split's code: no training at all;
- fusion: z-scored dense scores + w * z-scored BM25 scores per query, w chosen on the first `--valid-n`
  valid pairs (never on test).
Prints each MRR and the ratio to the dense baseline measured in the same run.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_fusion.py --corpus DIR --run RUN [--test-index INDEX]
(`--test-index`: an index of exactly the test split made with RUN, to reuse its code vectors.)
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import sys
import time

import numpy as np

STOP = set("the a an of to and or in is for be by with this that it on as are from if at".split())
WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def subtokens(tokens: list[str]) -> list[str]:
    """Identifier pieces: split on `_`/punctuation and camelCase, lower-cased."""
    out = []
    for tok in tokens:
        for part in re.split(r"[_\W]+", tok):
            out += [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", part)]
    return out


class BM25:
    """Okapi BM25 over code subtokens, IDF from a reference collection (the train split)."""

    def __init__(self, reference: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        df = collections.Counter()
        for code in reference:
            df.update(set(subtokens(code)))
        self.n, self.k1, self.b = len(reference), k1, b
        self.idf = {w: math.log(1 + (self.n - c + 0.5) / (c + 0.5)) for w, c in df.items()}

    def scores(self, queries: list[list[str]], codes: list[list[str]]) -> np.ndarray:
        """(len(queries), len(codes)) BM25 scores."""
        docs = [collections.Counter(subtokens(c)) for c in codes]
        lens = np.array([sum(d.values()) for d in docs], dtype=np.float64)
        avg = lens.mean() if len(lens) else 1.0
        qs = [[w for w in set(subtokens(q)) if w not in STOP] for q in queries]
        out = np.zeros((len(qs), len(docs)), dtype=np.float32)
        unseen = math.log(1 + self.n)
        for j, d in enumerate(docs):
            norm = self.k1 * (1 - self.b + self.b * lens[j] / avg)
            for i, q in enumerate(qs):
                out[i, j] = sum(self.idf.get(w, unseen) * d[w] * (self.k1 + 1) / (d[w] + norm) for w in q if w in d)
        return out


def zscore(s: np.ndarray) -> np.ndarray:
    return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--run", required=True, help="a search run (or an index's model/ folder)")
    ap.add_argument("--test-index", help="index of the test split built with --run (reuses its code vectors)")
    ap.add_argument("--valid-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fnbody.corpus.io import read_split
    from fnbody.io import read_jsonl
    from fnbody.search.embed import Embedder
    from fnbody.search.metrics import CSN_EVAL_BATCH, batched_mrr, reciprocal_ranks

    t0 = time.perf_counter()
    emb = Embedder.load(args.run, "cpu")
    test, valid, train = read_split(args.corpus, "test"), read_split(args.corpus, "valid", args.valid_n), read_split(args.corpus, "train")
    if len(test) < CSN_EVAL_BATCH:
        sys.exit(f"{args.corpus}: the CSN protocol needs >= {CSN_EVAL_BATCH} test pairs, found {len(test)}")
    if args.test_index:
        recs = read_jsonl(f"{args.test_index}/records.jsonl.gz")
        if [(r["path"], r["func_name"]) for r in recs] != [(r["path"], r["func_name"]) for r in test]:
            sys.exit(f"{args.test_index}: not an index of exactly {args.corpus}'s test split, in order")
        code_test = np.load(f"{args.test_index}/embeddings.npy")
    else:
        code_test = emb.embed_code_tokens([r["code_tokens"] for r in test])
    q_test = emb.embed_query_tokens([r["docstring_tokens"] for r in test])
    q_valid = emb.embed_query_tokens([r["docstring_tokens"] for r in valid])
    code_valid = emb.embed_code_tokens([r["code_tokens"] for r in valid])
    bm25 = BM25([r["code_tokens"] for r in train])
    print(f"embedded and indexed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    # Fusion weight on valid only.
    dense_v = q_valid @ code_valid.T
    lex_v = bm25.scores([r["docstring_tokens"] for r in valid], [r["code_tokens"] for r in valid])
    grid = [(float(reciprocal_ranks(zscore(dense_v) + w * zscore(lex_v)).mean()), w) for w in WEIGHTS]
    valid_mrr, w = max(grid)

    n = (len(test) // CSN_EVAL_BATCH) * CSN_EVAL_BATCH
    rr = {"dense": [], "bm25": [], "fusion": []}
    for s in range(0, n, CSN_EVAL_BATCH):
        part = test[s:s + CSN_EVAL_BATCH]
        dense = q_test[s:s + CSN_EVAL_BATCH] @ code_test[s:s + CSN_EVAL_BATCH].T
        lex = bm25.scores([r["docstring_tokens"] for r in part], [r["code_tokens"] for r in part])
        rr["dense"].append(reciprocal_ranks(dense))
        rr["bm25"].append(reciprocal_ranks(lex))
        rr["fusion"].append(reciprocal_ranks(zscore(dense) + w * zscore(lex)))
    mrr = {k: float(np.concatenate(v).mean()) for k, v in rr.items()}
    check, _ = batched_mrr(q_test, code_test)
    assert abs(check - mrr["dense"]) < 1e-6, (check, mrr["dense"])  # the same protocol as `fnbody eval search`

    base = mrr["dense"]
    sig = f"MRR|protocol:csn1000|n:{n}|data:{args.corpus.rstrip('/').split('/')[-1]}/test|model:{emb.cfg.encoder}|fp:{emb.fingerprint[:12]}"
    print(f"valid (first {len(valid)} pairs, whole pool) fusion weight grid: " + ", ".join(f"{w_:g}:{m:.4f}" for m, w_ in sorted(grid, key=lambda g: g[1])))
    print(f"dense {emb.cfg.encoder}: test MRR {base:.4f}  (baseline)  {sig}")
    print(f"bm25 (no training):     test MRR {mrr['bm25']:.4f}  = {mrr['bm25'] / base:.2f}x the dense run")
    print(f"fusion, w={w:g} (valid): test MRR {mrr['fusion']:.4f}  = {mrr['fusion'] / base:.3f}x the dense run")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lexical vs dense code search, and their fusion: BM25, a trained search run, and z-score fusion of both.

The CSN protocol (consecutive batches of 1000 test pairs, last partial batch dropped) scores three rankers:
- the dense run (any `fnbody train search` run: minilm, nbow, ...): the baseline of this benchmark;
- BM25 (k1 1.2, b 0.75) of the docstring's subtokens against the code's subtokens (identifiers split on
  `_` and camelCase, lower-cased), with IDF from the train split's code: no training at all;
- fusion: z-scored dense scores + w * z-scored BM25 scores per query, w chosen on the first `--valid-n`
  valid pairs (never on test).
BM25, the subtokens and the fusion are fnbody.search.lexical's (the ones `fnbody search query --hybrid` and
`fnbody eval search --hybrid` use).
Prints each MRR and the ratio to the dense baseline measured in the same run.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_fusion.py --corpus DIR --run RUN [--test-index INDEX] [--device cuda]
(`--test-index`: an index of exactly the test split made with RUN, to reuse its code vectors.)

`--second RUN2`: instead, three rankers fused: z(dense RUN) + wn * z(dense RUN2) + wb * z(BM25), (wn, wb) chosen on the
first `--valid-n` valid pairs from a grid fixed here (wn 0-0.5, wb 0-0.2), test read once; baselines in the same run: RUN
alone and RUN + BM25 at its own valid-chosen weight. E.g. the tuned MiniLM with an NBoW trained on an extended corpus.

`--latency ROWS --test-index INDEX`: instead of the MRRs, the per-query ranking latency of hybrid search
(`SearchIndex.search_hybrid`, w 0.3, warm: z-scores from the rows' moments, int8 scores bounding which rows to rescore in
fp32) and of the same search scanning every row in fp32 (as a cold or small index does, and as every index did before),
against the dense-only `search_vectors` (the baseline, int8 prefilter warm as in a served index), over INDEX's rows
replicated (vectors with noise 1e-3, BM25 postings with them) to >= ROWS rows. Ranking paths get query vectors encoded
beforehand (the encoding time is printed); the two end-to-end rows time `index.query` with the encoder.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--run", required=True, help="a search run (or an index's model/ folder)")
    ap.add_argument("--test-index", help="index of the test split built with --run (reuses its code vectors)")
    ap.add_argument("--valid-n", type=int, default=4000, help="valid pairs the fusion weight is chosen on (CSN batches of 1000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the dense run embeds: cpu, cuda, auto (scoring stays on the CPU)")
    ap.add_argument("--second", metavar="RUN2", help="also fuse this second dense run (weights chosen on valid)")
    ap.add_argument("--latency", type=int, metavar="ROWS", help="time hybrid vs dense queries over >= ROWS rows instead (needs --test-index)")
    ap.add_argument("--queries", type=int, default=200, help="--latency: test docstrings timed as queries")
    ap.add_argument("--int8", action="store_true", help="--latency: the int8 query encoder (for the end-to-end rows)")
    args = ap.parse_args()
    if args.latency:
        if not args.test_index:
            sys.exit("--latency needs --test-index")
        return latency(args)
    if args.second:
        return three_way(args)

    import torch

    torch.set_num_threads(args.threads)
    from fnbody.corpus.io import read_split
    from fnbody.io import read_jsonl
    from fnbody.search.embed import Embedder
    from fnbody.search.evaluate import fusion_weight_on_valid, score_lexical
    from fnbody.search.lexical import IDF
    from fnbody.search.metrics import CSN_EVAL_BATCH, batched_mrr

    t0 = time.perf_counter()
    emb = Embedder.load(args.run, args.device)
    test, train = read_split(args.corpus, "test"), read_split(args.corpus, "train")
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
    idf = IDF.from_documents(r["code_tokens"] for r in train)
    # Fusion weight on valid only: the same choice as `fnbody eval search --hybrid auto`.
    chosen = fusion_weight_on_valid(emb, args.corpus, idf, args.valid_n)
    w = chosen["weight"]
    print(f"embedded and indexed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    # Test: the same CSN batches for all three rankers (fnbody eval search --hybrid W runs the same code).
    data = f"{args.corpus.rstrip('/').split('/')[-1]}/test"
    dense_mrr, n = batched_mrr(q_test, code_test)
    lex, fused = score_lexical(emb, test, "csn1000", data, (q_test, code_test), idf, w, "train")
    mrr = {"dense": dense_mrr, "bm25": lex["mrr"], "fusion": fused["mrr"]}
    base = mrr["dense"]
    sig = f"MRR|protocol:csn1000|n:{n}|data:{data}|model:{emb.cfg.encoder}|fp:{emb.fingerprint[:12]}"
    print(f"valid (first {chosen['n']} pairs, {'CSN batches of 1000' if chosen['protocol'] == 'csn1000' else 'one pool'}) fusion weight grid: " + ", ".join(f"{w_}:{m:.4f}" for w_, m in chosen["grid"].items()))
    print(f"dense {emb.cfg.encoder}: test MRR {base:.4f}  (baseline)  {sig}")
    print(f"bm25 (no training):     test MRR {mrr['bm25']:.4f}  = {mrr['bm25'] / base:.2f}x the dense run")
    print(f"fusion, w={w:g} (valid): test MRR {mrr['fusion']:.4f}  = {mrr['fusion'] / base:.3f}x the dense run")
    return 0


SECOND_GRID = (0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
BM25_GRID = (0, 0.05, 0.1, 0.15, 0.2)


def three_way(args) -> int:
    """MRR of z(RUN) + wn z(RUN2) + wb z(BM25) on test, (wn, wb) chosen on valid; RUN alone and RUN + BM25 as baselines."""
    import itertools

    import torch

    torch.set_num_threads(args.threads)
    from fnbody.corpus.io import read_split
    from fnbody.search.embed import Embedder
    from fnbody.search.evaluate import embed_records
    from fnbody.search.lexical import IDF, pair_scores, zscore
    from fnbody.search.metrics import CSN_EVAL_BATCH, mean_reciprocal_rank

    B = CSN_EVAL_BATCH
    t0 = time.perf_counter()
    embs = [Embedder.load(r, args.device) for r in (args.run, args.second)]
    idf = IDF.from_documents(r["code_tokens"] for r in read_split(args.corpus, "train"))
    z: dict[str, dict[str, np.ndarray]] = {}
    for split, n in (("valid", args.valid_n), ("test", None)):
        rows = read_split(args.corpus, split, n)
        rows = rows[: len(rows) // B * B]
        if not rows:
            sys.exit(f"{args.corpus}: {split} has fewer than {B} pairs")
        blocks = [rows[i:i + B] for i in range(0, len(rows), B)]
        z[split] = {"bm25": np.stack([zscore(pair_scores([r.get("docstring_tokens") or [] for r in b],
                                                         [r.get("code_tokens") or [] for r in b], idf)) for b in blocks])}
        for name, emb in zip(("first", "second"), embs):
            q, c = embed_records(emb, rows)
            z[split][name] = np.stack([zscore(q[i:i + B] @ c[i:i + B].T) for i in range(0, len(rows), B)])
    print(f"embedded and scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def mrr(S: np.ndarray) -> float:  # blocks of equal size: the mean of their MRRs is the MRR over all queries
        return float(np.mean([mean_reciprocal_rank(M) for M in S]))

    def score(split: str, wn: float, wb: float) -> float:
        return mrr(z[split]["first"] + wn * z[split]["second"] + wb * z[split]["bm25"])

    grid = {(wn, wb): score("valid", wn, wb) for wn, wb in itertools.product(SECOND_GRID, BM25_GRID)}
    wn, wb = max(grid, key=lambda k: (grid[k], -k[0], -k[1]))  # ties: the smaller weights
    wb_only = max(BM25_GRID, key=lambda w: (grid[(0, w)], -w))
    base = score("test", 0, 0)
    n_test = z["test"]["first"].shape[0] * B
    print(f"valid (first {z['valid']['first'].shape[0] * B} pairs, CSN batches): RUN alone {grid[(0, 0)]:.4f}, "
          f"+ BM25 (wb {wb_only:g}) {grid[(0, wb_only)]:.4f}, three-way (wn {wn:g}, wb {wb:g}) {grid[(wn, wb)]:.4f}")
    print(f"test (CSN protocol, n={n_test}):")
    rows = [(f"RUN ({embs[0].cfg.encoder}) alone: baseline", base), (f"RUN2 ({embs[1].cfg.encoder}) alone", mrr(z["test"]["second"])),
            (f"RUN + BM25, wb {wb_only:g}", score("test", 0, wb_only)), (f"RUN + RUN2 + BM25, wn {wn:g}, wb {wb:g}", score("test", wn, wb))]
    for label, m in rows:
        print(f"  {label:<40} MRR {m:.4f} = {m / base:.3f}x")
    print(f"signature: MRR|protocol:csn1000|n:{n_test}|data:{args.corpus.rstrip('/').split('/')[-1]}/test|"
          f"fusion:z({embs[0].cfg.encoder}:{embs[0].fingerprint[:12]})+w{wn:g}z({embs[1].cfg.encoder}:{embs[1].fingerprint[:12]})"
          f"+w{wb:g}z(bm25)(valid:csn1000:{z['valid']['first'].shape[0] * B})")
    return 0


def latency(args) -> int:
    """Per-query p50/p99 of hybrid (w 0.3) and dense-only `SearchIndex.query` over >= args.latency replicated rows."""
    import os

    import torch

    from fnbody.search.index import SearchIndex, _tokens_of
    from fnbody.search.lexical import BM25Index

    torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    index = SearchIndex.load(args.test_index, quantize=args.int8)
    reps = -(-args.latency // len(index))
    rng = np.random.default_rng(0)
    queries = [" ".join(r["docstring"].split()[:20]) for r in index.records[:args.queries] if r.get("docstring")]
    index.vectors = np.ascontiguousarray(np.concatenate([index.vectors + rng.normal(scale=1e-3, size=index.vectors.shape).astype(np.float32)
                                                         for _ in range(reps)]))
    t0 = time.perf_counter()
    index.bm25 = BM25Index.build([_tokens_of(r["code"]) for r in index.records] * reps)
    build_s = time.perf_counter() - t0
    index.records = index.records * reps
    print(f"rows {len(index)} (x{reps} of {len(index) // reps}); BM25 built in {build_s:.1f}s: {len(index.bm25.terms)} terms, "
          f"{len(index.bm25.doc_ids)} postings", flush=True)
    from fnbody.search.data import query_tokens

    t0 = time.perf_counter()
    vecs = [index.embedder.embed_queries([q]) for q in queries]
    encode_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    toks = [query_tokens(q) for q in queries]
    # The same index, never warm: search_hybrid's fp32 path, which reads every row (a cold index's, and every index's before)
    scan = SearchIndex(index.path, index.info, index.vectors, index.records, index.embedder, index.bm25)
    scan.prefilter_min_rows = len(index) + 1

    def full_scan(i):
        return [r for r, _ in scan.search_hybrid(vecs[i], [toks[i]], 10, 0.3)[0]]

    paths = {"dense (baseline)": lambda i: index.search_vectors(vecs[i], 10),
             "hybrid w=0.3": lambda i: index.search_hybrid(vecs[i], [toks[i]], 10, 0.3),
             "hybrid full scan": full_scan,
             "bm25 scores only": lambda i: index.bm25.scores(toks[i]),
             "dense query end to end": lambda i: index.query(queries[i], 10, hybrid=0),
             "hybrid query end to end": lambda i: index.query(queries[i], 10, hybrid=0.3)}
    same = sum([r for r, _ in index.search_hybrid(vecs[i], [toks[i]], 10, 0.3)[0]] == full_scan(i) for i in range(len(queries)))
    print(f"hybrid top 10 equal to the full scan's for {same} of {len(queries)} queries", flush=True)
    for f in paths.values():  # warm-up; the second dense search builds the int8 prefilter, as a served index does
        for i in range(5):
            f(i)
    lat = {n: [] for n in paths}
    for order in (list(paths), list(paths)[::-1]):  # two rounds of opposite order so load drift hits every path alike
        for name in order:
            for i in range(len(queries)):
                t = time.perf_counter()
                paths[name](i)
                lat[name].append((time.perf_counter() - t) * 1000)
    base = np.percentile(lat["dense (baseline)"], 50)
    for name, v in lat.items():
        p50 = np.percentile(v, 50)
        print(f"{name:<18} p50 {p50:6.2f} ms  p99 {np.percentile(v, 99):6.2f} ms  = {p50 / base:.2f}x the dense search "
              f"({len(v)} timed searches, k=10, {'encoding + ranking' if 'end to end' in name else 'ranking only'})")
    print(f"query encoding ({index.embedder.cfg.encoder}, {'int8' if args.int8 else 'fp32'}, same for every path): mean {encode_ms:.1f} ms over {len(queries)} queries")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fnbody eval search`: CSN-protocol test MRR on a corpus, plus whole-pool MRR on the shipped real CSN rows.

With `hybrid=w`, the test split is also ranked by BM25 alone (IDF from the corpus's train split) and by the fusion
z(dense) + w * z(BM25), on the same protocol and batches as the dense MRR. With `hybrid="auto"`, w is the weight of
FUSION_GRID that ranks the first VALID_FUSION_PAIRS (4000) valid pairs best, by the CSN protocol when there are at
least 1000 of them (never chosen on test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fnbody.errors import FnbodyError
from fnbody.search.embed import Embedder
from fnbody.search.lexical import IDF, check_weight
from fnbody.search.metrics import CSN_EVAL_BATCH, batched_mrr, mean_reciprocal_rank, reciprocal_ranks

CSN_SAMPLE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "csn-python-sample"
# BM25 weights tried on valid by hybrid="auto". Past 1, BM25 leads: the right end for an encoder weaker than BM25 alone.
FUSION_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)
# Valid pairs scored by hybrid="auto": four CSN batches. One batch (1000 queries) chose w 0.2 for the H100 MiniLM, four
# chose 0.1, which also scores higher on test (0.6867 against 0.6830; RESULTS.md, session 7).
VALID_FUSION_PAIRS = 4 * CSN_EVAL_BATCH


def choose_fusion_weight(dense, lexical, weights: tuple[float, ...] = FUSION_GRID) -> tuple[float, dict[float, float]]:
    """The weight w whose fusion z(dense) + w * z(lexical) gives the highest MRR (ties: the smaller w), and every MRR.

    `dense` and `lexical` are (N, N) scores of N queries against their N true codes (diagonal), e.g. valid pairs, or
    equal-length sequences of such blocks (CSN batches): the MRR is then the mean over every block's queries.
    """
    from fnbody.search.lexical import fuse

    blocks = [(dense, lexical)] if np.ndim(dense) == 2 else list(zip(dense, lexical, strict=True))
    grid = {w: float(np.concatenate([reciprocal_ranks(fuse(d, x, w)) for d, x in blocks]).mean()) for w in weights}
    return max(grid, key=lambda w: (grid[w], -w)), grid


def signature(protocol: str, n: int, data: str, emb: Embedder) -> str:
    """sacrebleu-style signature for a search MRR: protocol, queries, data, tokenisation, model, version."""
    from fnbody import __version__

    cfg = emb.cfg
    prec = "" if emb.precision == "fp32" else f"|prec:{emb.precision}"
    return (f"MRR|protocol:{protocol}|n:{n}|data:{data}|tok:{emb.tokenization}"
            f"|model:{cfg.encoder}-{cfg.loss}|fp:{emb.fingerprint[:12]}{prec}|fnbody:{__version__}")


def embed_records(emb: Embedder, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, code vectors) of `records`' docstring and code tokens."""
    q = emb.embed_query_tokens([r.get("docstring_tokens") or [] for r in records])
    return q, emb.embed_code_tokens([r.get("code_tokens") or [] for r in records], desc="embed code")


def score_records(emb: Embedder, records: list[dict], protocol: str, data: str,
                  vectors: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """MRR of `records` under `protocol` ("csn1000" or "pool"), with n and a signature; `vectors`: from `embed_records`."""
    q, c = vectors if vectors is not None else embed_records(emb, records)
    if protocol == "csn1000":
        mrr, n = batched_mrr(q, c, CSN_EVAL_BATCH)
    else:
        mrr, n = mean_reciprocal_rank(q @ c.T), len(records)
    return {"mrr": mrr, "n": n, "protocol": protocol, "signature": signature(protocol, n, data, emb)}


def score_lexical(emb: Embedder, records: list[dict], protocol: str, data: str, vectors: tuple[np.ndarray, np.ndarray],
                  idf: IDF, weight: float, idf_data: str) -> tuple[dict, dict]:
    """(BM25-alone, fused) MRR of `records` under `protocol`, on the same batches as `score_records`, with signatures."""
    from fnbody import __version__
    from fnbody.search.lexical import fuse, lexical_signature, pair_scores

    q, c = vectors
    n = (len(records) // CSN_EVAL_BATCH) * CSN_EVAL_BATCH if protocol == "csn1000" else len(records)
    size = CSN_EVAL_BATCH if protocol == "csn1000" else max(n, 1)
    rr_lex, rr_fused = [], []
    for s in range(0, n, size):
        part = records[s:s + size]
        lex = pair_scores([r.get("docstring_tokens") or [] for r in part], [r.get("code_tokens") or [] for r in part], idf)
        rr_lex.append(reciprocal_ranks(lex))
        rr_fused.append(reciprocal_ranks(fuse(q[s:s + size] @ c[s:s + size].T, lex, weight)))
    lex_sig = lexical_signature()
    bm25 = {"mrr": float(np.concatenate(rr_lex).mean()), "n": n, "protocol": protocol,
            "signature": f"MRR|protocol:{protocol}|n:{n}|data:{data}|tok:code-subtokens|{lex_sig}|idf:{idf_data}({idf.n})|fnbody:{__version__}"}
    fusion = {"mrr": float(np.concatenate(rr_fused).mean()), "n": n, "protocol": protocol, "weight": weight,
              "signature": f"{signature(protocol, n, data, emb)}|{lex_sig}|idf:{idf_data}({idf.n})|fusion:z+w{weight:g}"}
    return bm25, fusion


def read_csn_rows(folder: str | Path) -> list[dict]:
    """Every row of the CSN jsonl(.gz) files in `folder`, in file-name order."""
    from fnbody.io import read_jsonl

    files = sorted(Path(folder).glob("*.jsonl*"))
    if not files:
        raise FnbodyError(f"{folder}: no CSN .jsonl(.gz) files")
    return [r for f in files for r in read_jsonl(f)]


def evaluate_search(run_dir: str | Path, corpus: str | Path, *, csn_sample: str | Path | None = CSN_SAMPLE,
                    max_samples: int | None = None, device: str = "cpu", hybrid: float | str = 0.0, precision: str = "fp32") -> dict:
    """Test MRR by the CSN protocol (or a labelled whole-pool MRR when the test split has < 1000 functions).

    `hybrid` w > 0: also `bm25` and `fusion` (z(dense) + w * z(BM25)) MRRs of the same queries, IDF from the train split.
    `hybrid="auto"`: the same, with w chosen on the first VALID_FUSION_PAIRS valid pairs (`fusion_weight` records the grid).
    """
    from fnbody.corpus.io import iter_split, read_split
    from fnbody.progress import progress

    auto = hybrid == "auto"
    if not auto:
        if isinstance(hybrid, str):
            try:
                hybrid = float(hybrid)
            except ValueError:
                raise FnbodyError(f"hybrid must be a weight >= 0 or 'auto', got {hybrid!r}") from None
        check_weight(hybrid)
    emb = Embedder.load(run_dir, device, precision=precision)
    test = read_split(corpus, "test", max_samples)
    if len(test) < 2:
        raise FnbodyError(f"{corpus}: test split has {len(test)} functions; MRR needs at least 2")
    result: dict = {"run": str(run_dir), "corpus": str(corpus), "test_size": len(test)}
    data = f"{Path(corpus).name}/test"
    protocol = "csn1000" if len(test) >= CSN_EVAL_BATCH else "pool"
    vectors = embed_records(emb, test)
    if protocol == "csn1000":
        result["csn_protocol"] = score_records(emb, test, "csn1000", data, vectors)
        result["csn_protocol"]["dropped"] = len(test) - result["csn_protocol"]["n"]
    else:
        result["csn_protocol"] = None
        result["note"] = (f"test split has {len(test)} < {CSN_EVAL_BATCH} functions: the CSN protocol (1 true + 999 distractors) "
                          f"cannot be applied; the whole-pool MRR below ranks against {len(test) - 1} distractors and is not comparable")
        result["test_pool"] = score_records(emb, test, "pool", data, vectors)
    if auto or hybrid > 0:
        train = progress((r.get("code_tokens") or [] for r in iter_split(corpus, "train")), desc="BM25 IDF (train split)", unit="fn")
        idf = IDF.from_documents(train)
        chosen = fusion_weight_on_valid(emb, corpus, idf) if auto else None
        result["bm25"], result["fusion"] = score_lexical(emb, test, protocol, data, vectors, idf, chosen["weight"] if chosen else hybrid,
                                                         f"{Path(corpus).name}/train")
        if chosen:
            result["fusion_weight"] = chosen
            result["fusion"]["signature"] += f"(valid:{chosen['protocol']}:{chosen['n']})"
    if csn_sample is not None and Path(csn_sample).is_dir():
        rows = read_csn_rows(csn_sample)
        result["csn_sample_pool"] = score_records(emb, rows, "pool", f"csn-python-sample({len(rows)} real CSN rows)")
    return result


def fusion_weight_on_valid(emb: Embedder, corpus: str | Path, idf: IDF, n: int = VALID_FUSION_PAIRS) -> dict:
    """hybrid="auto": the FUSION_GRID weight that ranks the first `n` valid pairs best, with the queries scored and every MRR.

    With at least 1000 of them, the pairs are ranked as the test split is (CSN batches of 1000, last partial batch
    dropped); fewer are ranked as one whole pool.
    """
    from fnbody.corpus.io import read_split
    from fnbody.search.lexical import pair_scores

    valid = read_split(corpus, "valid", n)
    if len(valid) < 2:
        raise FnbodyError(f"{corpus}: hybrid 'auto' chooses the BM25 weight on the valid split, which has {len(valid)} functions")
    size = CSN_EVAL_BATCH if len(valid) >= CSN_EVAL_BATCH else len(valid)
    valid = valid[:len(valid) // size * size]
    q, c = embed_records(emb, valid)
    dense, lex = [], []
    for i in range(0, len(valid), size):
        rows = valid[i:i + size]
        dense.append(q[i:i + size] @ c[i:i + size].T)
        lex.append(pair_scores([r.get("docstring_tokens") or [] for r in rows], [r.get("code_tokens") or [] for r in rows], idf))
    weight, grid = choose_fusion_weight(dense, lex)
    return {"weight": weight, "n": len(valid), "protocol": "csn1000" if size == CSN_EVAL_BATCH else "pool",
            "grid": {f"{w:g}": m for w, m in grid.items()}}


def format_result(result: dict) -> str:
    """Human-readable summary of `evaluate_search`'s result."""
    lines = [f"search eval of {result['run']} on {result['corpus']} (test split: {result['test_size']} functions)"]

    def line(label: str, r: dict) -> str:
        return f"  {label:<34} MRR {r['mrr']:.4f}  over {r['n']} queries\n    {r['signature']}"

    if result.get("csn_protocol"):
        r = result["csn_protocol"]
        lines.append(line("CSN protocol (1000-batches)", r) + (f"\n    ({r['dropped']} queries in the last partial batch dropped)" if r["dropped"] else ""))
    else:
        lines.append(f"  CSN protocol: not available. {result['note']}")
        lines.append(line("test, whole pool (NOT CSN protocol)", result["test_pool"]))
    chosen = f" (chosen on {result['fusion_weight']['n']} valid pairs)" if result.get("fusion_weight") else ""
    for key, label in (("bm25", "  BM25 alone (no training)"), ("fusion", f"  dense + BM25 fusion, w={result.get('fusion', {}).get('weight', 0):g}{chosen}")):
        if result.get(key):  # indented under the dense line: the same queries and batches
            lines.append(line(label, result[key]))
    if result.get("csn_sample_pool"):
        lines.append(line(f"{result['csn_sample_pool']['n']} CSN sample rows (--csn-sample), whole pool", result["csn_sample_pool"]))
    return "\n".join(lines)

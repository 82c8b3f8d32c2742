"""`fnbody eval search`: CSN-protocol test MRR on a corpus, plus whole-pool MRR on the shipped real CSN rows."""

from __future__ import annotations

from pathlib import Path


from fnbody.errors import FnbodyError
from fnbody.search.embed import Embedder
from fnbody.search.metrics import CSN_EVAL_BATCH, batched_mrr, mean_reciprocal_rank

CSN_SAMPLE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "csn-python-sample"


def signature(protocol: str, n: int, data: str, emb: Embedder) -> str:
    """sacrebleu-style signature for a search MRR: protocol, queries, data, tokenisation, model, version."""
    from fnbody import __version__

    cfg = emb.cfg
    return (f"MRR|protocol:{protocol}|n:{n}|data:{data}|tok:{emb.tokenization}"
            f"|model:{cfg.encoder}-{cfg.loss}|fp:{emb.fingerprint[:12]}|fnbody:{__version__}")


def score_records(emb: Embedder, records: list[dict], protocol: str, data: str) -> dict:
    """MRR of `records` under `protocol` ("csn1000" or "pool"), with n and a signature."""
    q = emb.embed_query_tokens([r.get("docstring_tokens") or [] for r in records])
    c = emb.embed_code_tokens([r.get("code_tokens") or [] for r in records], desc="embed code")
    if protocol == "csn1000":
        mrr, n = batched_mrr(q, c, CSN_EVAL_BATCH)
    else:
        mrr, n = mean_reciprocal_rank(q @ c.T), len(records)
    return {"mrr": mrr, "n": n, "protocol": protocol, "signature": signature(protocol, n, data, emb)}


def read_csn_rows(folder: str | Path) -> list[dict]:
    """Every row of the CSN jsonl(.gz) files in `folder`, in file-name order."""
    from fnbody.io import read_jsonl

    files = sorted(Path(folder).glob("*.jsonl*"))
    if not files:
        raise FnbodyError(f"{folder}: no CSN .jsonl(.gz) files")
    return [r for f in files for r in read_jsonl(f)]


def evaluate_search(run_dir: str | Path, corpus: str | Path, *, csn_sample: str | Path | None = CSN_SAMPLE,
                    max_samples: int | None = None, device: str = "cpu") -> dict:
    """Test MRR by the CSN protocol (or a labelled whole-pool MRR when the test split has < 1000 functions)."""
    from fnbody.corpus.io import read_split

    emb = Embedder.load(run_dir, device)
    test = read_split(corpus, "test", max_samples)
    if len(test) < 2:
        raise FnbodyError(f"{corpus}: test split has {len(test)} functions; MRR needs at least 2")
    result: dict = {"run": str(run_dir), "corpus": str(corpus), "test_size": len(test)}
    data = f"{Path(corpus).name}/test"
    if len(test) >= CSN_EVAL_BATCH:
        result["csn_protocol"] = score_records(emb, test, "csn1000", data)
        result["csn_protocol"]["dropped"] = len(test) - result["csn_protocol"]["n"]
    else:
        result["csn_protocol"] = None
        result["note"] = (f"test split has {len(test)} < {CSN_EVAL_BATCH} functions: the CSN protocol (1 true + 999 distractors) "
                          f"cannot be applied; the whole-pool MRR below ranks against {len(test) - 1} distractors and is not comparable")
        result["test_pool"] = score_records(emb, test, "pool", data)
    if csn_sample is not None and Path(csn_sample).is_dir():
        rows = read_csn_rows(csn_sample)
        result["csn_sample_pool"] = score_records(emb, rows, "pool", f"csn-python-sample({len(rows)} real CSN rows)")
    return result


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
    if result.get("csn_sample_pool"):
        lines.append(line("250 real CSN rows, whole pool", result["csn_sample_pool"]))
    return "\n".join(lines)

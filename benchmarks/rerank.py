"""Retrieval as a ranker: BLEU of the candidate that agrees most with the prompt's retrieved neighbours.

For the first N prompts of a corpus split, the generator's greedy body plus N-1 samples are drawn once
(`ExecutionCheckedGenerator.sample`, kept in --cache so a rerun only re-ranks) and the top candidate is
chosen several ways, each scored with the pipeline's BLEU family against the reference bodies:

* greedy: the baseline measured in this run (ratios are against it, and against log-prob);
* log-prob: fnbody's `--checked N` order (parses, passes the docstring's examples, mean log-probability);
* neighbours k=K: the same order with `NeighbourRanker(k=K)` (`--rank-by-neighbours INDEX --rank-k K`):
  agreement (sentence BLEU) with the bodies of the prompt's top K hits, own repo excluded, before log-prob;
* any-candidate neighbours k=K (a diagnostic): the highest agreement among all candidates, parsing or not.

Choose K (and the rule) on `valid`, then read `test` once. Signatures name the decoding and the index.

    .venv/bin/python benchmarks/rerank.py --run runs/demo/lm/smollm2-finetuned --corpus runs/demo/corpus \\
        --index runs/demo/index --hybrid 0.3 --split valid -n 150 --cache /tmp/rerank_valid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def experiment_args(doc: str) -> argparse.ArgumentParser:
    """The flags every retrieval-steering experiment shares (this one and rag_decode.py): model, rows, index, decoding."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--run", required=True, help="generator run (any fnbody model folder)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--index", required=True, help="search index of the corpus's train split")
    ap.add_argument("--hybrid", type=float, default=None, help="BM25 fusion weight of the retrieval (default: the index's own)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("-n", type=int, default=150, help="first N prompts of the split")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--require-body", action="store_true")
    ap.add_argument("--cache", help="JSON file of the generations (written once, reused when it matches)")
    ap.add_argument("--threads", type=int, default=0)
    return ap


def print_table(args, index, rows: list[dict], decoding: str, picks: dict[str, list[str]], baselines: dict[str, list[str]],
                first: str, extra_sig: str = "") -> None:
    """A markdown row per output set: the BLEU family, then its ratio to each baseline (paired-bootstrap p); the signature."""
    from fnbody.evaluate.bleu import bleu_report, paired_bleu_test

    refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]
    vs = "".join(f" vs {name} (p) |" for name in baselines)
    print(f"| {first} | BLEU | brevity penalty | n-gram precisions | CodeXGLUE BLEU | chrF |{vs}\n|---|---:|---:|---|---:|---:|"
          + "---:|" * len(baselines))
    for name, hyps in picks.items():
        m = bleu_report(hyps, refs, codes)["metrics"]
        cells = [f"{m['bleu']['score']:.3f}", f"{m['bleu']['bp']:.3f}", "/".join(f"{p:.1f}" for p in m["bleu"]["precisions"]),
                 f"{m['codexglue-bleu']['score']:.2f}", f"{m['chrf']['score']:.2f}"]
        for other in baselines.values():
            t = None if hyps is other else paired_bleu_test(other, hyps, refs)
            cells.append(f"{t['system'] / t['baseline']:.2f}x ({t['p_value']:.3f})" if t and t["baseline"] else "-")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    hybrid = args.hybrid if args.hybrid is not None else index.default_hybrid
    print(f"signature: {m['bleu']['signature']}|data:{Path(args.corpus).name}/{args.split}|n:{len(rows)}|{decoding}"
          f"|index:{index.info.get('encoder')}-{len(index)}|hybrid:{hybrid:g}{extra_sig}|exclude:own-repo")


def main() -> int:
    ap = experiment_args(__doc__)
    ap.add_argument("--checked", type=int, default=8, help="candidates per prompt: greedy + N-1 samples")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--k", default="1,3,5", help="neighbour counts to compare")
    args = ap.parse_args()

    import torch

    from fnbody.augment.checked import Candidate, ExecutionCheckedGenerator
    from fnbody.augment.rag import repo_lookup
    from fnbody.augment.rerank import NeighbourRanker
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.load import load_generator
    from fnbody.generate.prompts import load_prompts
    from fnbody.io import write_json
    from fnbody.search.index import SearchIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_prompts(args.corpus, split=args.split, max_samples=args.n)
    prompts = [r["prompt"] for r in rows]
    decoding = (f"greedy+{args.checked - 1}@T{args.temperature:g}|max_new_tokens:{args.max_new_tokens}|seed:0"
                f"{'|require_body' if args.require_body else ''}")
    key = {"run": str(args.run), "corpus": str(args.corpus), "split": args.split, "task_ids": [r["task_id"] for r in rows], "decoding": decoding}
    cache = Path(args.cache) if args.cache else None
    saved = json.loads(cache.read_text()) if cache and cache.exists() else None
    if saved and {k: saved.get(k) for k in key} == key:
        print(f"candidates from {cache}", flush=True)
        cands = saved["candidates"]
    else:
        gen = load_generator(args.run, device="cpu")
        cfg = GenerationConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0,
                               require_body=args.require_body)
        t0 = time.perf_counter()
        sampled = ExecutionCheckedGenerator(gen, n_candidates=args.checked, temperature=args.temperature).sample(prompts, cfg)
        print(f"sampled {sum(map(len, sampled))} distinct candidates for {len(rows)} prompts in {time.perf_counter() - t0:.0f} s", flush=True)
        cands = [[{"text": c.text, "lp": c.mean_logprob, "src": c.source} for c in cs] for cs in sampled]
        if cache:
            write_json(cache, {**key, "candidates": cands})

    index = SearchIndex.load(args.index)
    exclude = repo_lookup(rows)

    class Saved:  # the candidates are already drawn: checking needs no generator
        name = "saved"

    def fresh() -> list[list[Candidate]]:
        return [[Candidate(text=c["text"], mean_logprob=c["lp"], finish_reason="", num_tokens=0, source=c["src"]) for c in cs] for cs in cands]

    def top(ranker) -> list[str]:
        return ExecutionCheckedGenerator(Saved(), n_candidates=args.checked, ranker=ranker).choose(prompts, fresh())

    picks = {"greedy": [cs[0]["text"] if cs else "" for cs in cands], "log-prob": top(None)}
    for k in (int(x) for x in args.k.split(",")):
        ranker = NeighbourRanker(index, k=k, hybrid=args.hybrid, exclude_repo=exclude)
        picks[f"neighbours k={k}"] = top(ranker)
        refs_k = ranker.references(prompts)
        picks[f"any-candidate neighbours k={k}"] = [  # diagnostic: parsing is not required
            max(cs, key=lambda c: (ranker.agreement(c["text"], nb), c["src"] == "greedy"))["text"] if cs else ""
            for cs, nb in zip(cands, refs_k)]
    print(f"\n{args.split}, n = {len(rows)}, {decoding}; ratios against greedy and log-prob measured in this run")
    print_table(args, index, rows, decoding, picks, {"greedy": picks["greedy"], "log-prob": picks["log-prob"]}, "choice")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which retriever gives retrieval-augmented generation the most useful context? Retrieve-and-copy BLEU per fusion weight.

For every prompt of a split, the top hit that generation would put before it (own repo and the function
itself excluded, as in `RetrievalAugmentedGenerator`) is taken, and its body is scored against the
prompt's reference body with the same BLEU family the pipeline reports. That is the classic
"retrieve and copy" baseline: it needs no generator, so it isolates the retriever. Weight 0 is the
dense index alone (the baseline of this run); each weight w > 0 ranks by z(dense) + w * z(BM25).
Pick the weight on `valid`, report it on `test`. Several comma-separated indexes compare retrievers
(e.g. NBoW against MiniLM) in one run, against the first one's dense-only row.

    .venv/bin/python benchmarks/rag_retrieval.py --corpus runs/corpus --index runs/index-bm25 --split valid
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--index", required=True, help="index of the train split, built with --bm25; comma-separated to compare "
                    "retrievers (the first one's dense-only row is the baseline)")
    ap.add_argument("--split", default="valid", help="prompts to score (choose the weight on valid, report test)")
    ap.add_argument("-n", type=int, default=1000, help="first N prompts of the split")
    ap.add_argument("--weights", default="0,0.3,1,3,100", help="hybrid weights to compare; 0 = dense only (the baseline)")
    args = ap.parse_args()

    from fnbody.augment.prompt import query_text
    from fnbody.augment.rag import is_same_function, query_all
    from fnbody.evaluate.bleu import bleu_report
    from fnbody.generate.prompts import load_prompts
    from fnbody.search.index import SearchIndex

    indexes = {path: SearchIndex.load(path) for path in args.index.split(",")}
    body_of = {r["code"]: r["body"] for r in load_prompts(args.corpus, "train")}
    rows = load_prompts(args.corpus, args.split, args.n)
    queries = [query_text(r["prompt"]) for r in rows]
    refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]
    weights = [float(w) for w in args.weights.split(",")]
    if 0.0 not in weights:
        weights.insert(0, 0.0)
    results = {}
    for path, index in indexes.items():
        name = index.info["encoder"] if all(k[0] != index.info["encoder"] for k in results) else f"{index.info['encoder']}@{path}"
        print(f"index {path}: {name} + BM25, {len(index)} functions; {len(rows)} {args.split} prompts", flush=True)
        for w in weights:
            t0 = time.perf_counter()
            copies = []
            for r, hits in zip(rows, query_all(index, queries, 20, hybrid=w)):
                allowed = [h for h in hits if h.get("repo") != r.get("repo") and not is_same_function(h.get("code") or "", r["prompt"])]
                copies.append(body_of.get(allowed[0]["code"], "") if allowed else "")
            results[(name, w)] = bleu_report(copies, refs, codes)["metrics"]
            found = sum(bool(c) for c in copies)
            print(f"{name}, weight {w:g}: " + ", ".join(f"{k} {v['score']:.4f}" for k, v in results[(name, w)].items())
                  + f"  ({time.perf_counter() - t0:.1f} s, a copy for {found}/{len(rows)})", flush=True)
    first = next(iter(results))[0]
    base = results[(first, 0.0)]
    print(f"\nretrieve-and-copy on {args.split} (n={len(rows)}), ratio to {first} dense-only retrieval measured above:")
    print("| retriever | weight | seed-BLEU | BLEU | chrF | CodeXGLUE BLEU |\n|---|---|---|---|---|---|")
    for (name, w), m in results.items():
        cells = [f"{m[k]['score']:.4f} ({m[k]['score'] / base[k]['score']:.2f}x)" if base[k]['score'] else f"{m[k]['score']:.4f}"
                 for k in ("seed-bleu", "bleu", "chrf", "codexglue-bleu")]
        print(f"| {name} | {w:g} | " + " | ".join(cells) + " |")
    best = max(results, key=lambda k: results[k]["bleu"]["score"])
    print(f"best by BLEU on {args.split}: {best[0]}, weight {best[1]:g}\nsignature: {base['bleu']['signature']}|data:{args.split}|n:{len(rows)}|copy:top1-excl-own-repo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

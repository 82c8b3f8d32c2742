"""Retrieval-guided decoding (issue 9): BLEU with the LM's distribution mixed with retrieved neighbours' continuations.

For the first N prompts of a corpus split: plain greedy decoding (the baseline, measured in this run), then
greedy decoding with `NeighbourGuide` for each (alpha, min_n) setting: the prompt's top-k training functions
(own repo excluded) never enter the prompt; their bodies' n-gram continuations are mixed into each step's
next-token distribution. Each output set is scored with the pipeline's BLEU family against the reference
bodies; ratios and paired-bootstrap p-values are against plain greedy. Outputs are kept in --cache.
Choose the setting on `valid`, then read `test` once.

    .venv/bin/python benchmarks/rag_decode.py --run runs/demo/lm/smollm2-finetuned --corpus runs/demo/corpus \\
        --index runs/demo/index --hybrid 0.3 --split valid -n 150 --settings 0.3:1,0.3:3 --cache /tmp/guide_valid.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rerank import experiment_args, print_table  # shared with the ranking experiment (same folder)


def main() -> int:
    ap = experiment_args(__doc__)
    ap.add_argument("--k", type=int, default=3, help="neighbours per prompt")
    ap.add_argument("--settings", default="0.3:1", help="comma-separated alpha:min_n pairs")
    ap.add_argument("--max-n", type=int, default=4)
    ap.add_argument("--plot", help="PNG of BLEU and brevity penalty against alpha (min_n = 1 settings), plain greedy beside")
    args = ap.parse_args()

    import torch

    from fnbody.augment.guide import NeighbourGuide
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
    decoding = f"greedy|max_new_tokens:{args.max_new_tokens}{'|require_body' if args.require_body else ''}"
    key = {"run": str(args.run), "corpus": str(args.corpus), "split": args.split, "task_ids": [r["task_id"] for r in rows],
           "decoding": decoding, "k": args.k, "max_n": args.max_n, "hybrid": args.hybrid}
    cache = Path(args.cache) if args.cache else None
    saved = json.loads(cache.read_text()) if cache and cache.exists() else {}
    outputs: dict[str, list[str]] = saved.get("outputs", {}) if {k: saved.get(k) for k in key} == key else {}

    index = SearchIndex.load(args.index)
    ranker = NeighbourRanker(index, k=args.k, hybrid=args.hybrid, exclude_repo=repo_lookup(rows))
    refs_nb = ranker.references(prompts)
    gen = load_generator(args.run, device="cpu")
    cfg = GenerationConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           require_body=args.require_body)
    settings = [("plain", None)] + [(f"guided alpha={a} min_n={m}", (float(a), int(m)))
                                    for a, m in (s.split(":") for s in args.settings.split(","))]
    for name, setting in settings:
        if name in outputs:
            continue
        guide = None
        if setting is not None:
            guide = NeighbourGuide(gen.tokenizer, dict(zip(prompts, refs_nb)), alpha=setting[0], max_n=args.max_n, min_n=setting[1])
        gen.logits_hook = guide
        t0 = time.perf_counter()
        outputs[name] = [c[0].text for c in gen.generate(prompts, cfg)]
        extra = f", {guide.matched / max(1, guide.steps):.0%} of steps matched" if guide else ""
        print(f"{name}: {len(prompts)} prompts in {time.perf_counter() - t0:.0f} s{extra}", flush=True)
        if cache:
            write_json(cache, {**key, "outputs": outputs})
    gen.logits_hook = None

    print(f"\n{args.split}, n = {len(rows)}, {decoding}, k = {args.k}; ratios against plain greedy measured in this run")
    print_table(args, index, rows, decoding, {name: outputs[name] for name, _ in settings}, {"plain": outputs["plain"]},
                "decoding", f"|k:{args.k}")
    if args.plot:
        plot_alpha(outputs, settings, rows, args.plot, f"{args.split}, n = {len(rows)}, k = {args.k}")
    return 0


def plot_alpha(outputs: dict[str, list[str]], settings: list, rows: list[dict], png: str, title: str) -> None:
    """BLEU and brevity penalty of each guided alpha (min_n = 1) beside plain greedy's."""
    from fnbody.evaluate.bleu import bleu_report
    from fnbody.plots import plot_curves

    refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]

    def bleu(name: str) -> dict:
        return bleu_report(outputs[name], refs, codes)["metrics"]["bleu"]

    plain = bleu("plain")
    points = sorted((s[0], bleu(name)) for name, s in settings if s is not None and s[1] == 1)
    curve = [{"alpha": 0.0, "guided BLEU": plain["score"], "plain BLEU": plain["score"], "guided bp": plain["bp"], "plain bp": plain["bp"]}]
    curve += [{"alpha": a, "guided BLEU": m["score"], "plain BLEU": plain["score"], "guided bp": m["bp"], "plain bp": plain["bp"]}
              for a, m in points]
    plot_curves(curve, png, panels=[("BLEU", ["guided BLEU", "plain BLEU"]), ("brevity penalty", ["guided bp", "plain bp"])],
                x="alpha", title=f"retrieval-guided decoding: {title}")
    print(f"plot: {png}")


if __name__ == "__main__":
    raise SystemExit(main())

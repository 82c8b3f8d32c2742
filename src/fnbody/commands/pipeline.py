"""`fnbody run`: the whole report, from corpus to report.md, as one cached and resumable command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_PROMPT = 'def read_csv_rows(path, delimiter=","):\n    """Read a CSV file and return its rows as lists of strings."""\n'


def _print_summary(out: Path, device: str) -> None:
    """The generation table, then one function completed by the best generator."""
    from fnbody.errors import FnbodyError
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.load import load_generator

    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    start = md.find("## Generation")
    if start >= 0:
        end = md.find("\nSignatures:", start)
        print(md[start:end if end > 0 else None].strip())
    best = (report.get("relative_gain") or {}).get("best")
    gens = report.get("generation") or {}
    if not best and gens:
        best = next(iter(gens))
    if not best:
        return
    run = gens[best]["run"]
    try:
        gen = load_generator(run, device=device)
        body = gen.generate([DEMO_PROMPT], GenerationConfig(max_new_tokens=160))[0][0].text
    except FnbodyError as e:
        print(f"(could not complete the demo function: {e})")
        return
    print(f"\nOne function completed by {best}:\n")
    print(DEMO_PROMPT + body)


def cmd_run(args: argparse.Namespace) -> int:
    from fnbody.config import apply_overrides
    from fnbody.pipeline.config import load_preset
    from fnbody.pipeline.run import run_pipeline

    cfg = apply_overrides(load_preset(args.preset), args.set)
    out = Path(args.out)
    only = [s for s in args.only.split(",") if s] if args.only else None
    run_pipeline(cfg, out, only=only, argv=sys.argv)
    print(f"\nreport: {out / 'report.md'} (and report.json, figures/)\n", file=sys.stderr)
    if not args.quiet:
        _print_summary(out, cfg.device)
    return 0


def register(sub, groups) -> None:
    p = sub.add_parser("run", help="run the whole pipeline (corpus, search, char-RNN, transformers, evaluation) and write a report",
                       description="Reproduce the CS230 report end to end. Stages are cached (skipped when their inputs and config "
                                   "are unchanged) and resumable; logs go to OUT/logs/.")
    p.add_argument("--preset", default="demo", help="tiny, demo, paper, or a TOML file (default: demo)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="type-checked config override, e.g. lms.0.max_steps=50 or evaluation.bleu_samples=100")
    p.add_argument("--only", default="", help="comma-separated stage names to run (others must be cached)")
    p.add_argument("--quiet", action="store_true", help="do not print the table and demo completion at the end")
    p.set_defaults(func=cmd_run)

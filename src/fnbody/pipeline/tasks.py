"""Pipeline steps that are library calls rather than CLI commands, run as `python -m fnbody.pipeline.tasks`.

Running them as child processes keeps every stage alike: its own log, its own failure, and a
clean interpreter (a model loaded for one stage is not held in memory by the next).
Rerun into the same folder, a task resumes its unfinished sample files and keeps the finished ones
(the pipeline wipes a stage's folder whenever the stage's settings change, so nothing stale is kept).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.io import write_json


def _is_lm(gen) -> bool:
    from fnbody.generate.lm import LMGenerator

    return isinstance(gen, LMGenerator)


def _decoding(max_new_tokens: int, batch_size: int, seed: int, require_body: bool = False):
    from fnbody.generate.base import GenerationConfig

    return GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, require_body=require_body)


def _generate_timed(gen, rows: list[dict], cfg, path: Path) -> float | None:
    """`generate_samples` keeping a finished file; the seconds it took, or None when a file from an earlier attempt
    was kept untouched (nothing was generated, so there is no time to report)."""
    from fnbody.generate.run import generate_samples

    before = path.stat().st_mtime_ns if path.exists() else None
    t0 = time.perf_counter()
    generate_samples(gen, rows, cfg, path, reuse_complete=True)
    return None if before is not None and path.stat().st_mtime_ns == before else round(time.perf_counter() - t0, 1)


def evaluate_generator(run: str, corpus: str, out: str, name: str, bleu_samples: int = 1000, humaneval_problems: int = 0,
                       max_new_tokens: int = 256, batch_size: int = 8, timeout: float = 10.0, seed: int = 0,
                       device: str = "auto", novelty_train: int = 20000, require_body: bool = False) -> dict:
    """Generate for the corpus test split and HumanEval with one model, score everything, write summary.json.

    Generation is greedy (the report's setting) and resumable; every metric carries its signature.
    """
    from fnbody.corpus.io import iter_split
    from fnbody.evaluate.bleu import bleu_report
    from fnbody.evaluate.humaneval import evaluate_functional_correctness
    from fnbody.evaluate.novelty import NgramIndex, novelty
    from fnbody.evaluate.samples import load_problems
    from fnbody.evaluate.syntax import syntax_validity
    from fnbody.generate.load import load_generator
    from fnbody.generate.prompts import load_prompts
    from fnbody.io import read_jsonl

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = load_generator(run, device=device)
    require_body = require_body and _is_lm(gen)  # only transformers implement it; the signature says what ran
    cfg = _decoding(max_new_tokens, batch_size, seed, require_body)
    summary: dict = {"model": name, "run": run, "generator": gen.name, "decoding": f"greedy|max_new_tokens:{max_new_tokens}|seed:{seed}{'|require_body' if require_body else ''}"}

    # --- the corpus test split: BLEU family, syntax, novelty -------------------------------------
    rows = load_prompts(corpus, split="test", max_samples=bleu_samples or None)
    test_samples = out_dir / "test_samples.jsonl"
    summary["test_generation_s"] = _generate_timed(gen, rows, cfg, test_samples)
    samples = {s["task_id"]: s["completion"] for s in read_jsonl(test_samples)}
    hyps = [samples[r["task_id"]] for r in rows]
    bleu = bleu_report(hyps, [r["body"] for r in rows], [r["code"] for r in rows])
    data_sig = f"data:{Path(corpus).name}/test|n:{len(rows)}"
    summary["bleu"] = {k: {**v, "signature": f"{v['signature']}|{data_sig}|model:{name}"} for k, v in bleu["metrics"].items()}
    syn, _ = syntax_validity([r["prompt"] for r in rows], hyps)
    summary["syntax"] = syn
    index = NgramIndex.from_corpus(corpus, max_samples=novelty_train or None)
    nov, _ = novelty(hyps, index)
    summary["novelty"] = nov
    summary["listing"] = [{"task_id": r["task_id"], "prompt": r["prompt"], "completion": samples[r["task_id"]], "reference": r["body"]} for r in rows[:3]]

    # --- HumanEval: functional correctness --------------------------------------------------------
    problems = load_problems()
    ids = list(problems)[: humaneval_problems or None]
    he_rows = [{"task_id": i, "prompt": problems[i]["prompt"]} for i in ids]
    he_samples = out_dir / "humaneval_samples.jsonl"
    summary["humaneval_generation_s"] = _generate_timed(gen, he_rows, cfg, he_samples)
    he_summary, results = evaluate_functional_correctness(read_jsonl(he_samples), {i: problems[i] for i in ids}, ks=(1,), timeout=timeout)
    he_summary["problems"] = f"HumanEval first {len(ids)} of 164" if len(ids) < 164 else "HumanEval all 164"
    summary["humaneval"] = he_summary
    from fnbody.io import write_jsonl

    write_jsonl(out_dir / "humaneval_results.jsonl", results)
    write_json(out_dir / "summary.json", summary)
    return summary


def _rag_signature(idx, rag_k: int, rag_hybrid: float) -> str:
    hybrid_sig = f"+bm25|hybrid:{rag_hybrid:g}" if rag_hybrid > 0 else ""
    return f"rag:k{rag_k}|index:{idx.info.get('encoder', 'unknown')}-{idx.info.get('count')}{hybrid_sig}|exclude:own-repo"


def evaluate_augmented(run: str, corpus: str, index: str, plain: str, out: str, name: str, rag_k: int = 2,
                       rag_budget_tokens: int = 0, rag_hybrid: float = 0.0, checked_n: int = 8, checked_temperature: float = 0.8,
                       bleu_samples: int = 1000, humaneval_problems: int = 0, max_new_tokens: int = 256, batch_size: int = 8,
                       timeout: float = 10.0, seed: int = 0, device: str = "auto", combined: bool = False,
                       require_body: bool = False, humaneval_first: bool = False, rerank_k: int = 0,
                       guide_alpha: float = 0.0, guide_k: int = 3) -> dict:
    """Beyond the report: BLEU and pass@1 with retrieval, and pass@1 of the execution-checked top candidate.

    With `rerank_k` > 0, retrieval also steers without entering the prompt: `checked_n` candidates per test row
    (greedy + samples, sampled once and kept in test_candidates.jsonl) are ranked two ways, by log-probability and
    by agreement with the bodies of the row's top `rerank_k` retrieved functions (own repo excluded), and the
    top candidate of each is scored by BLEU beside plain greedy.

    With `guide_alpha` > 0, the BLEU test rows are also decoded greedily with retrieval-guided decoding
    (`GuidedGenerator`: the continuations in the bodies of each row's top `guide_k` retrieved functions, own repo
    excluded, mixed into every next-token distribution at weight `guide_alpha`) and scored beside plain greedy.

    With `combined`, HumanEval is also scored for both at once: N candidates sampled with retrieved
    context, then ranked by doctests and log-probability.

    With `humaneval_first`, HumanEval runs before the BLEU part and execution-checked before retrieval:
    under a time limit (a lent GPU), the part that is cut is then the one that matters least. Each part
    is kept in summary.partial.json as it finishes, whatever the order.

    The baselines (plain greedy BLEU on the same test rows, plain greedy HumanEval pass@1) come
    from the generator's own evaluation folder `plain`, so both sides are scored on identical
    prompts with identical decoding; retrieval excludes each test prompt's own repo.
    """
    from fnbody.augment.checked import ExecutionCheckedGenerator
    from fnbody.augment.rag import RetrievalAugmentedGenerator, repo_lookup
    from fnbody.config import read_run_info
    from fnbody.evaluate.bleu import bleu_report, paired_bleu_test
    from fnbody.evaluate.humaneval import evaluate_functional_correctness
    from fnbody.evaluate.samples import load_problems
    from fnbody.generate.load import load_generator
    from fnbody.generate.prompts import load_prompts
    from fnbody.generate.run import generate_samples
    from fnbody.io import read_json, read_jsonl, write_jsonl
    from fnbody.search.index import SearchIndex

    out_dir, plain_dir = Path(out), Path(plain)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_summary = read_json(plain_dir / "summary.json")
    gen = load_generator(run, device=device)
    require_body = require_body and _is_lm(gen)  # only transformers implement it; the signature says what ran
    cfg = _decoding(max_new_tokens, batch_size, seed, require_body)
    idx = SearchIndex.load(index, device=device)  # "auto" resolves there: a pretrained query encoder wants the GPU too
    summary: dict = {"model": name, "run": run, "index": {**{k: idx.info.get(k) for k in ("run", "encoder", "count", "source")}, "hybrid": rag_hybrid},
                     "decoding": f"greedy|max_new_tokens:{max_new_tokens}|seed:{seed}{'|require_body' if require_body else ''}",
                     "trained_with_context": bool(((read_run_info(run).get("config") or {}).get("data") or {}).get("rag_index"))}

    # Each finished part is kept in summary.partial.json, so a run stopped later (a timeout, a lost machine) still shows what it
    # measured; summary.json, which the report reads, is written only once every part is done.
    partial = out_dir / "summary.partial.json"

    @functools.cache
    def test_rows() -> list[dict]:
        """The BLEU test rows, the plain evaluation's: read once for every part that scores them."""
        return load_prompts(corpus, split="test", max_samples=bleu_samples or None)

    @functools.cache
    def plain_samples() -> dict[str, str]:
        return {s["task_id"]: s["completion"] for s in read_jsonl(plain_dir / "test_samples.jsonl")}

    index_sig = f"index:{idx.info.get('encoder', 'unknown')}-{idx.info.get('count')}|exclude:own-repo"

    def plain_for(rows: list[dict]) -> list[str]:
        """The plain evaluation's greedy bodies for `rows`, in order."""
        plain_got = plain_samples()
        missing = [r["task_id"] for r in rows if r["task_id"] not in plain_got]
        if missing:
            raise FnbodyError(f"{plain_dir}: plain samples lack {len(missing)} test rows (first {missing[0]!r}); rerun its evaluation")
        return [plain_got[r["task_id"]] for r in rows]

    def bleu_part() -> None:
        # --- retrieval on the corpus test split: the same rows as the plain evaluation -------------------
        rows = test_rows()
        rag = RetrievalAugmentedGenerator(gen, idx, k=rag_k, exclude_repo=repo_lookup(rows), budget_tokens=rag_budget_tokens, hybrid=rag_hybrid)
        rag_samples = out_dir / "test_samples_rag.jsonl"
        generate_samples(rag, rows, cfg, rag_samples, reuse_complete=True)
        got = {s["task_id"]: s["completion"] for s in read_jsonl(rag_samples)}
        plain_hyps = plain_for(rows)
        refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]
        data_sig = f"data:{Path(corpus).name}/test|n:{len(rows)}"
        sig = _rag_signature(idx, rag_k, rag_hybrid)
        rag_hyps = [got[r["task_id"]] for r in rows]
        with_rag, without = bleu_report(rag_hyps, refs, codes)["metrics"], bleu_report(plain_hyps, refs, codes)["metrics"]
        retrievals = rag.retrieve([r["prompt"] for r in rows], max_new_tokens)
        summary["bleu"] = {
            "plain": {k: {**v, "signature": f"{v['signature']}|{data_sig}|model:{name}"} for k, v in without.items()},
            "rag": {k: {**v, "signature": f"{v['signature']}|{data_sig}|model:{name}|{sig}"} for k, v in with_rag.items()},
            "own_repo_hits": sum(h["repo"] == r.get("repo") for rt, r in zip(retrievals, rows) for h in rt.hits),
            "mean_context_functions": sum(len(rt.hits) for rt in retrievals) / max(len(rows), 1),
        }
        # Is the change more than resampling noise? (With tens of test rows, BLEU moves by several points.)
        paired = paired_bleu_test(plain_hyps, rag_hyps, refs)
        summary["bleu"]["rag_vs_plain"] = {**paired, "signature": f"{paired['signature']}|{data_sig}|model:{name}|{sig}"}
        write_json(partial, {**summary, "partial": True})

    def humaneval_part() -> None:
        # --- HumanEval: plain greedy (from the plain evaluation), with retrieval, execution-checked --------
        problems = load_problems()
        ids = list(problems)[: humaneval_problems or None]
        he_rows = [{"task_id": i, "prompt": problems[i]["prompt"]} for i in ids]
        subset = {i: problems[i] for i in ids}
        label = f"HumanEval first {len(ids)} of 164" if len(ids) < 164 else "HumanEval all 164"
        summary["humaneval"] = {"problems": label, "plain": base_summary["humaneval"]}
        he_rag = RetrievalAugmentedGenerator(gen, idx, k=rag_k, budget_tokens=rag_budget_tokens, hybrid=rag_hybrid)
        sig = _rag_signature(idx, rag_k, rag_hybrid)
        check_sig = f"checked:n{checked_n}|T:{checked_temperature:g}|rank:doctests>logprob"
        configs = [("rag", he_rag, sig), ("checked", ExecutionCheckedGenerator(gen, n_candidates=checked_n, temperature=checked_temperature), check_sig)]
        if humaneval_first:
            configs.reverse()
        if combined:
            configs.append(("rag+checked", ExecutionCheckedGenerator(he_rag, n_candidates=checked_n, temperature=checked_temperature), f"{sig}|{check_sig}"))
        for key, g, key_sig in configs:
            path = out_dir / f"humaneval_samples_{key}.jsonl"
            generate_samples(g, he_rows, cfg, path, reuse_complete=True)
            he, results = evaluate_functional_correctness(read_jsonl(path), subset, ks=(1,), timeout=timeout)
            he["problems"] = label
            he["signature"] += f"|{key_sig}"
            summary["humaneval"][key] = he
            write_jsonl(out_dir / f"humaneval_results_{key}.jsonl", results)
            write_json(partial, {**summary, "partial": True})

    def rerank_part() -> None:
        # --- the same sampled candidates ranked by log-probability and by agreement with retrieved neighbours ---------
        from fnbody.augment.checked import Candidate
        from fnbody.augment.rerank import NeighbourRanker

        rows = test_rows()
        prompts = [r["prompt"] for r in rows]
        chk = ExecutionCheckedGenerator(gen, n_candidates=checked_n, temperature=checked_temperature)
        cand_path = out_dir / "test_candidates.jsonl"
        drawn = f"n{checked_n}|T:{checked_temperature:g}|{summary['decoding']}"  # candidates from other settings are not reused
        saved = {s["task_id"]: s["candidates"] for s in read_jsonl(cand_path) if s.get("decoding") == drawn} if cand_path.exists() else {}
        if any(r["task_id"] not in saved for r in rows):  # sampled once, whole: a cut run samples again
            sampled = chk.sample(prompts, cfg)
            saved = {r["task_id"]: [c.to_dict() for c in cands] for r, cands in zip(rows, sampled)}
            write_jsonl(cand_path, [{"task_id": r["task_id"], "decoding": drawn, "candidates": saved[r["task_id"]]} for r in rows])

        def top(ranker) -> list[str]:  # each ranking checks fresh copies of the saved (unchecked) candidates
            fresh = [[Candidate(**c) for c in saved[r["task_id"]]] for r in rows]
            return ExecutionCheckedGenerator(gen, n_candidates=checked_n, ranker=ranker).choose(prompts, fresh)

        ranker = NeighbourRanker(idx, k=rerank_k, hybrid=rag_hybrid, exclude_repo=repo_lookup(rows))
        by_lp, by_nb = top(None), top(ranker)
        plain_hyps = plain_for(rows)
        refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]
        data_sig = f"data:{Path(corpus).name}/test|n:{len(rows)}|model:{name}"
        lp_sig = f"checked:n{checked_n}|T:{checked_temperature:g}|rank:doctests>logprob"
        nb_sig = (f"checked:n{checked_n}|T:{checked_temperature:g}|rank:doctests>{ranker.signature}>logprob"
                  f"|{index_sig}")
        out = {}
        for key, hyps, sig in (("checked", by_lp, lp_sig), ("neighbours", by_nb, nb_sig)):
            out[key] = {k: {**v, "signature": f"{v['signature']}|{data_sig}|{sig}"} for k, v in bleu_report(hyps, refs, codes)["metrics"].items()}
        for key, base, sig in (("neighbours_vs_plain", plain_hyps, nb_sig), ("neighbours_vs_checked", by_lp, nb_sig)):
            paired = paired_bleu_test(base, by_nb, refs)
            out[key] = {**paired, "signature": f"{paired['signature']}|{data_sig}|{sig}"}
        out["changed_choice"] = sum(a != b for a, b in zip(by_lp, by_nb))
        summary["rerank"] = out
        write_json(partial, {**summary, "partial": True})

    def guide_part() -> None:
        # --- retrieval-guided decoding: greedy, the neighbours' continuations mixed into each step --------------
        from fnbody.augment.guide import GuidedGenerator

        rows = test_rows()
        guided = GuidedGenerator(gen, idx, k=guide_k, alpha=guide_alpha, hybrid=rag_hybrid, exclude_repo=repo_lookup(rows))
        path = out_dir / "test_samples_guided.jsonl"
        generate_samples(guided, rows, cfg, path, reuse_complete=True)
        got = {s["task_id"]: s["completion"] for s in read_jsonl(path)}
        hyps, plain_hyps = [got[r["task_id"]] for r in rows], plain_for(rows)
        refs, codes = [r["body"] for r in rows], [r["code"] for r in rows]
        sig = f"data:{Path(corpus).name}/test|n:{len(rows)}|model:{name}|{guided.signature}|{index_sig}"
        out = {k: {**v, "signature": f"{v['signature']}|{sig}"} for k, v in bleu_report(hyps, refs, codes)["metrics"].items()}
        paired = paired_bleu_test(plain_hyps, hyps, refs)
        out["guide_vs_plain"] = {**paired, "signature": f"{paired['signature']}|{sig}"}
        summary["guide"] = out
        write_json(partial, {**summary, "partial": True})

    parts = [humaneval_part, bleu_part] if humaneval_first else [bleu_part, humaneval_part]
    for on, part in ((guide_alpha > 0, guide_part), (rerank_k > 0, rerank_part)):
        if on:
            parts.insert(parts.index(bleu_part) + 1, part)
    for part in parts:
        part()
    write_json(out_dir / "summary.json", summary)
    partial.unlink(missing_ok=True)
    return summary


def evaluate_search_run(run: str, corpus: str, out: str, device: str = "cpu", csn_sample: str = "", hybrid: float | str = 0.0) -> dict:
    """Score one search run by the CSN protocol (and on the real CSN sample, from `csn_sample` or its default folder) into a JSON file.

    `hybrid`: also BM25 alone and dense + BM25 fused, at this weight or, with "auto", the one chosen on valid.
    """
    from fnbody.search.evaluate import CSN_SAMPLE, evaluate_search

    result = evaluate_search(run, corpus, device=device, csn_sample=csn_sample or CSN_SAMPLE, hybrid=hybrid)
    write_json(out, result)
    return result


def corpus_statistics(corpus: str, out: str, plots: str) -> dict:
    """Corpus statistics and Figure 3's histograms."""
    from fnbody.corpus.stats import corpus_stats

    stats = corpus_stats(corpus, plots_dir=plots)
    write_json(out, stats)
    return stats


def write_report_task(out_dir: str) -> str:
    """Write report.md and report.json from everything the other stages left in `out_dir`."""
    from fnbody.pipeline.report import write_report

    return str(write_report(Path(out_dir)))


TASKS = {
    "evaluate_generator": evaluate_generator,
    "evaluate_augmented": evaluate_augmented,
    "evaluate_search_run": evaluate_search_run,
    "corpus_statistics": corpus_statistics,
    "write_report": write_report_task,
}


def task_cmd(task: str, **kwargs) -> list[str]:
    """The command line that runs `task` with JSON-encoded keyword arguments in a child process."""
    if task not in TASKS:
        raise FnbodyError(f"unknown pipeline task {task!r}")
    return [sys.executable, "-m", "fnbody.pipeline.tasks", task, json.dumps(kwargs)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in TASKS:
        print(f"usage: python -m fnbody.pipeline.tasks {{{','.join(TASKS)}}} JSON_KWARGS", file=sys.stderr)
        return 2
    try:
        TASKS[argv[0]](**json.loads(argv[1]))
    except FnbodyError as e:
        print(f"fnbody: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

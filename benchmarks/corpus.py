"""Benchmark: `fnbody corpus build` on the default sources against the naive extractor, same files, same run.

The naive baseline is the obvious script: one process; for each file read, `ast.parse`, then for each
function with a docstring `ast.get_source_segment` (which re-splits the whole file on every call,
so it is quadratic in functions per file), dedent, `tokenize` for code tokens, docstring tokens,
and CSN's filters applied to the finished records. The builder does the same work (plus
deduplication, splitting and writing shards) with one line split per file, filters before
tokenizing, and `-j` worker processes.

    python benchmarks/corpus.py [--max-files N] [--jobs J]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import tempfile
import textwrap
import time

from fnbody.corpus.build import BuildConfig, build_corpus
from fnbody.corpus.extract import decode_source
from fnbody.corpus.filters import FilterConfig, function_skip_reason, is_test_path
from fnbody.corpus.sources import plan_sources
from fnbody.tokens.code import code_tokens, docstring_tokens


def naive(files: list[tuple[str, str, str]]) -> int:
    """The obvious single-process extractor; returns the number of records kept."""
    cfg, kept = FilterConfig(), 0
    for full, _repo, rel in files:
        try:
            with open(full, "rb") as f:
                src = decode_source(f.read())
            tree = ast.parse(src)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node, clean=False):
                code = textwrap.dedent(ast.get_source_segment(src, node, padded=True) or "")
                doc = ast.get_docstring(node, clean=False).strip()
                try:
                    ctoks = code_tokens(code)
                except Exception:
                    continue
                dtoks = docstring_tokens(doc)
                stmts = node.body[1:]
                if is_test_path(rel) or function_skip_reason(cfg, node.name, None, code, len(dtoks), stmts):
                    continue
                kept += 1
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-files", type=int, default=None, help="cap both runs at the first N default source files")
    ap.add_argument("--jobs", type=int, default=0, help="builder workers (default: all cores)")
    ap.add_argument("--skip-naive", action="store_true", help="time only the builder")
    args = ap.parse_args()
    os.environ.setdefault("FNBODY_NO_PROGRESS", "1")
    plan = plan_sources([], args.max_files)
    files = [f for t in plan.tasks for f in t.files]
    n = len(files)
    cores = os.cpu_count()
    print(f"files: {n} (default sources: stdlib + site-packages of {sys.executable}); cores: {cores}; jobs: {args.jobs or cores}")

    out = tempfile.mkdtemp(prefix="fnbody-bench-")
    try:
        t0 = time.perf_counter()
        m = build_corpus([], os.path.join(out, "c"), BuildConfig(jobs=args.jobs, max_files=args.max_files))
        t_build = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    fast = n / t_build
    print(f"builder: {t_build:.1f} s, {fast:.1f} files/s, {m['counts']['functions']['after_filters']} records after filters, "
          f"{m['counts']['functions']['final']} after dedup")
    if args.skip_naive:
        return
    t0 = time.perf_counter()
    kept = naive(files)
    t_naive = time.perf_counter() - t0
    slow = n / t_naive
    print(f"naive:   {t_naive:.1f} s, {slow:.1f} files/s, {kept} records after filters (no dedup)")
    print(f"speed-up: {fast / slow:.2f}x (target >= 6x on 2 cores)")


if __name__ == "__main__":
    main()

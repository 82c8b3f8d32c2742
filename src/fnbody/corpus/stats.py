"""Corpus statistics: records per split, token-length distributions, top repos, Figure-3 histograms."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fnbody.corpus.io import SPLITS, check_corpus, iter_split, split_files
from fnbody.errors import FnbodyError
from fnbody.io import os_reason

# The CS230 report's figures, for side-by-side comparison.
REPORT = {"code_tokens_median": "60-100", "code_tokens_p95": "~350", "docstring_tokens_median": "~10"}


def _summary(values: list[int]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    v = np.asarray(values)
    return {"n": int(v.size), "mean": round(float(v.mean()), 1), "median": float(np.median(v)),
            "p95": float(np.quantile(v, 0.95)), "max": int(v.max())}


def corpus_stats(corpus_dir: str | Path, plots_dir: str | Path | None = None, top: int = 10) -> dict:
    """Counts per split, code/docstring token-length median and p95, top repos; PNG histograms into `plots_dir`."""
    manifest = check_corpus(corpus_dir)
    if plots_dir is not None and Path(plots_dir).exists() and not Path(plots_dir).is_dir():  # say so before reading the corpus
        raise FnbodyError(f"--plots {plots_dir}: exists and is not a folder")
    code_len: list[int] = []
    doc_len: list[int] = []
    repos: Counter = Counter()
    per_split: dict[str, dict] = {}
    for split in SPLITS:
        split_files(corpus_dir, split)  # an error naming the split when it is missing
        n, split_repos = 0, set()
        for r in iter_split(corpus_dir, split):
            n += 1
            code_len.append(len(r["code_tokens"]))
            doc_len.append(len(r["docstring_tokens"]))
            repos[r["repo"]] += 1
            split_repos.add(r["repo"])
        per_split[split] = {"records": n, "repos": len(split_repos)}
    stats = {
        "corpus": str(corpus_dir),
        "content_hash": manifest.get("content_hash"),
        "splits": per_split,
        "records": sum(s["records"] for s in per_split.values()),
        "repos": len(repos),
        "code_tokens": _summary(code_len),
        "docstring_tokens": _summary(doc_len),
        "report": REPORT,
        "top_repos": [[repo, n] for repo, n in repos.most_common(top)],
        "signature": f"corpus-stats|tok:python-tokenize,csn-docstring-regex|n:{len(code_len)}|{manifest.get('content_hash')}|fnbody:{manifest.get('version')}",
    }
    if manifest.get("extends"):  # built with --extend: say what the train split gained over which base
        ext = manifest["extends"]
        stats["extends"] = {"base": ext.get("corpus"), "base_content_hash": ext.get("content_hash"), "added_train": ext["added"]["train"],
                            "added_repos": ext["added"]["repos"]}
    if plots_dir is not None:
        stats["plots"] = [str(_plot_lengths(Path(plots_dir), code_len, doc_len))]
    return stats


def _plot_lengths(plots_dir: Path, code_len: list[int], doc_len: list[int]) -> Path:
    """Write the token-length histograms into `plots_dir`; an error naming the path when it cannot be written."""
    from fnbody.plots import plot_histograms

    out = plots_dir / "token_lengths.png"
    try:
        return plot_histograms({"code tokens per function": code_len, "docstring tokens (first paragraph)": doc_len}, out,
                               xlabel="tokens", title=f"Token lengths ({len(code_len)} functions; tails clipped at p99)")
    except OSError as e:
        raise FnbodyError(f"--plots {plots_dir}: cannot write {out.name} ({os_reason(e)})") from None


def format_stats(st: dict) -> str:
    """Human-readable text of `corpus_stats` output."""
    lines = [f"corpus {st['corpus']}  ({st['content_hash']})"]
    for split, s in st["splits"].items():
        lines.append(f"  {split:<6} {s['records']:>8} records  {s['repos']:>5} repos")
    lines.append(f"  total  {st['records']:>8} records  {st['repos']:>5} repos")
    if st.get("extends"):
        e = st["extends"]
        lines.append(f"  extends {e['base']} ({e['base_content_hash']}): train +{e['added_train']} records from {e['added_repos']} repos; "
                     "valid and test are the base's")
    for key, label in (("code_tokens", "code tokens"), ("docstring_tokens", "docstring tokens")):
        s = st[key]
        lines.append(f"{label}: median {s['median']}, p95 {s['p95']}, mean {s['mean']}, max {s['max']}")
    r = st["report"]
    lines.append(f"report (CS230): code median {r['code_tokens_median']}, p95 {r['code_tokens_p95']}; docstring median {r['docstring_tokens_median']}")
    lines.append("top repos:")
    lines.extend(f"  {n:>7}  {repo}" for repo, n in st["top_repos"])
    for p in st.get("plots", []):
        lines.append(f"plot: {p}")
    lines.append(st["signature"])
    return "\n".join(lines)

"""`fnbody corpus build`: sources -> extracted, filtered, deduplicated, split, sharded CSN-style corpus.

Workers (multiprocessing) read, parse, filter and tokenize; the parent deduplicates (needs the
whole set), splits by repo and writes the shards into a temporary folder that is renamed into place
only when everything, manifest included, is written. An interrupted build leaves no corpus behind.

With `extend`, a built corpus is the base: its shards are copied unchanged, so its valid and test
stay exactly what earlier results were measured on, and the sources' functions become extra train
records after deduplication against every base record and with the base's valid/test repos left out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fnbody import __version__
from fnbody.corpus.dedup import dedup_exact, dedup_near
from fnbody.corpus.filters import FilterConfig
from fnbody.corpus.io import FORMAT_VERSION, MANIFEST, RECORD_FIELDS, SPLITS, check_corpus, iter_shard, shard_name, split_files
from fnbody.corpus.records import NUM_PERM, Options, TaskResult, dedup_keys, run_task
from fnbody.corpus.sources import plan_sources
from fnbody.corpus.split import split_of
from fnbody.errors import FnbodyError
from fnbody.io import atomic_open, fresh_dir_beside, os_reason, replace_dir
from fnbody.progress import progress


@dataclass
class BuildConfig:
    """Everything that decides what `fnbody corpus build` writes."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    exact_dedup: bool = field(default=True, metadata={"help": "drop exact duplicates (same code tokens)"})
    near_dedup: bool = field(default=True, metadata={"help": "drop near duplicates (token-set Jaccard >= near_threshold, MinHash LSH)"})
    near_threshold: float = field(default=0.8, metadata={"help": "Jaccard similarity at which two functions are near duplicates"})
    seed: int = field(default=0, metadata={"help": "seed of the repo hash that assigns splits"})
    fractions: tuple[float, float, float] = field(default=(0.8, 0.1, 0.1), metadata={"help": "train/valid/test shares of repos"})
    keep_csn_partition: bool = field(default=False, metadata={"help": "CSN input keeps its own partition instead of the repo hash"})
    max_file_mb: float = field(default=2.0, metadata={"help": "skip source files (and archive members) larger than this"})
    max_archive_mb: float = field(default=1024.0, metadata={"help": "stop reading an archive after this much uncompressed data"})
    shard_size: int = field(default=30000, metadata={"help": "records per shard (CSN used 30000)"})
    strict: bool = field(default=False, metadata={"help": "fail at the first bad input instead of skipping it"})
    jobs: int = field(default=0, metadata={"help": "worker processes; 0 = all cores"})
    max_files: int | None = field(default=None, metadata={"help": "debug cap: read at most this many source files"})
    max_samples: int | None = field(default=None, metadata={"help": "debug cap: keep at most this many records"})
    extend: str | None = field(default=None, metadata={"help": "base corpus to extend: its splits are kept byte for byte, "
                                                         "the sources' functions are added to train only"})


def _merge(total: dict, res: TaskResult) -> None:
    for key in ("files", "skips", "functions"):
        total[key].update(getattr(res, key))
    for reason, places in res.examples.items():
        ex = total["examples"].setdefault(reason, [])
        ex.extend(places[: max(0, 5 - len(ex))])


def _task_weight(task) -> int:
    return len(task.files) if task.kind == "files" else 1


def _run_tasks(tasks: list, opts: Options, jobs: int) -> tuple[list[dict], dict]:
    """Run every task (in a pool when jobs > 1) and gather records and counts; strict mode stops at the first problem."""
    total = {"files": Counter(), "skips": Counter(), "functions": Counter(), "examples": {}}
    records: list[dict] = []
    bar = progress(total=sum(map(_task_weight, tasks)), desc="extract", unit="file")

    def consume(results) -> None:
        for task, res in zip(tasks, results):
            if res.problem is not None:
                reason, where = res.problem
                raise FnbodyError(f"{where}: {reason.replace('_', ' ')} (--strict stops at the first bad input)")
            _merge(total, res)
            records.extend(res.records)
            bar.update(_task_weight(task))

    try:
        if jobs <= 1 or len(tasks) <= 1:
            consume(run_task(t, opts) for t in tasks)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(min(jobs, len(tasks))) as pool:  # __exit__ terminates workers, also on Ctrl-C / strict errors
                consume(pool.imap(_run_task_star, [(t, opts) for t in tasks], chunksize=1))
    finally:
        bar.close()
    return records, total


def _run_task_star(args: tuple) -> TaskResult:
    return run_task(*args)


def _check_config(cfg: BuildConfig) -> None:
    """Reject settings that would silently write a wrong corpus (or none)."""
    if not all(math.isfinite(f) and f >= 0 for f in cfg.fractions) or abs(sum(cfg.fractions) - 1.0) > 1e-6:
        raise FnbodyError(f"--split {','.join(map(str, cfg.fractions))}: shares must be finite, non-negative and sum to 1")
    if not 0.0 < cfg.near_threshold <= 1.0:
        raise FnbodyError(f"near_threshold {cfg.near_threshold} must be in (0, 1]")
    if cfg.shard_size < 1:
        raise FnbodyError(f"--shard-size {cfg.shard_size}: must be >= 1 (records per shard)")
    for flag, cap in (("--max-files", cfg.max_files), ("--max-samples", cfg.max_samples)):
        if cap is not None and cap < 0:
            raise FnbodyError(f"{flag} {cap}: must be >= 0")


def _prepare_out(out: Path) -> Path:
    """Refuse to replace a non-corpus folder; return a fresh temporary folder beside `out`."""
    try:
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())):
            raise FnbodyError(f"{out}: exists and is not an fnbody corpus; refusing to overwrite it (choose another --out)")
        out.parent.mkdir(parents=True, exist_ok=True)
        return fresh_dir_beside(out, "tmp")
    except OSError as e:
        raise FnbodyError(f"--out {out}: cannot write the corpus there ({os_reason(e)})") from None


def _write_shard(path: Path, lines: list[str]) -> tuple[int, str, int]:
    """Write one gzipped jsonl shard atomically; return (records, sha256 of the file, its size in bytes).

    Compressed here at level 6 (not atomic_open's 9: several times faster, a few percent larger),
    with mtime 0 so identical records give identical bytes; `atomic_open` then only renames.
    """
    data = gzip.compress("".join(lines).encode("utf-8"), compresslevel=6, mtime=0)
    tmp = path.with_name(path.name.removesuffix(".gz") + ".gzdata")  # no .gz suffix: atomic_open must not re-compress
    with atomic_open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(lines), hashlib.sha256(data).hexdigest(), len(data)


def _project_name(repo: str) -> str:
    """A repo name compared as PyPI compares distributions (PEP 503): 'Ruamel.YAML' == 'ruamel-yaml'."""
    return re.sub(r"[-_.]+", "-", repo).lower()


@dataclass
class _Base:
    """What extending a corpus needs from it: every record's dedup keys, its eval repos, its shards."""

    path: Path
    manifest: dict
    keys: list[dict]
    eval_repos: set[str]
    shards: dict[str, list[tuple[Path, int]]]  # split -> (shard file, records in it)
    repos: dict[str, set[str]]  # split -> repo names


def _read_base(base: str | Path, out: Path, near: bool) -> _Base:
    """Load a corpus to extend, refusing one that is the output itself."""
    base = Path(base)
    manifest = check_corpus(base)
    if base.resolve() == out.resolve():
        raise FnbodyError(f"--extend {base}: the base corpus cannot also be --out (write the extended corpus to a new folder)")
    b = _Base(base, manifest, [], set(), {}, {})
    for split in SPLITS:
        b.shards[split], b.repos[split] = [], set()
        for path in progress(split_files(base, split), desc=f"base {split}", unit="shard"):
            n = 0
            for row in iter_shard(path):
                b.repos[split].add(row["repo"])
                b.keys.append({"code_tokens": row["code_tokens"], **dedup_keys(row["code_tokens"], near)})
                n += 1
            b.shards[split].append((path, n))
        if split != "train":
            b.eval_repos |= {_project_name(r) for r in b.repos[split]}
    return b


def _split_counts(by_split: dict[str, list[dict]], base: _Base | None) -> dict:
    """Records and repos per split written, the base's included when extending."""
    counts = {}
    for s, rows in by_split.items():
        repos = {r["repo"] for r in rows} | (base.repos[s] if base else set())
        counts[s] = {"records": len(rows) + (sum(n for _, n in base.shards[s]) if base else 0), "repos": len(repos)}
    return counts


def build_corpus(sources: list[str], out: str | Path, cfg: BuildConfig | None = None) -> dict:
    """Build a corpus from `sources` (empty: stdlib + site-packages) into `out`; return the manifest."""
    cfg = cfg or BuildConfig()
    _check_config(cfg)
    out = Path(out)
    shutil.rmtree(_prepare_out(out))  # an --out that is refused or cannot be written fails now, not after the extraction
    base = None
    if cfg.extend:
        if cfg.keep_csn_partition:
            raise FnbodyError("--extend adds every new function to train; it cannot be combined with --keep-csn-partition")
        if not sources:
            raise FnbodyError("--extend needs SOURCE arguments (folders, wheels, sdists, CSN jsonl) whose functions to add")
        base = _read_base(cfg.extend, out, cfg.near_dedup)
    plan = plan_sources(list(sources), cfg.max_files)
    if cfg.strict and plan.skips:
        reason, where = plan.skips[0]
        raise FnbodyError(f"{where}: {reason.replace('_', ' ')} (--strict stops at the first bad input)")
    opts = Options(
        filters=cfg.filters, max_bytes=int(cfg.max_file_mb * 2**20), max_archive_bytes=int(cfg.max_archive_mb * 2**20),
        strict=cfg.strict, near_dedup=cfg.near_dedup,
    )
    records, total = _run_tasks(plan.tasks, opts, cfg.jobs or os.cpu_count() or 1)
    for reason, where in plan.skips:
        total["skips"][reason] += 1
        ex = total["examples"].setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    # Deterministic order whatever the worker count: the first of each duplicate group is kept.
    records.sort(key=lambda r: (r["repo"], r["path"], r["lineno"] or 0, r["func_name"]))
    fn_counts = dict(total["functions"])
    n_after_filters = len(records)
    if not records and base is None:  # nothing to write: a wrong path or a --max-files cap, not a corpus
        skipped = ", ".join(f"{k} {v}" for k, v in total["skips"].items() if v) or "none"
        raise FnbodyError(f"no function with a docstring passed the filters in {', '.join(map(str, sources)) or 'the default sources'} "
                          f"({fn_counts.get('extracted', 0)} functions extracted; inputs skipped: {skipped}); nothing written")
    n_eval_repo = 0
    fixed: list[dict] = []
    if base is not None:
        # A newer copy of a repo the base evaluates on would leak into training: drop it. The base's
        # records go first in deduplication and are all kept, so a new function that repeats (or nearly
        # repeats) any base function, test included, is the one dropped.
        kept = [r for r in records if _project_name(r["repo"]) not in base.eval_repos]
        n_eval_repo, records, fixed = len(records) - len(kept), kept, base.keys
    n_exact = n_near = 0
    if cfg.exact_dedup:
        records, n_exact = dedup_exact(fixed + records, keep_first=len(fixed))
        records = records[len(fixed):]
    if cfg.near_dedup:
        records, n_near = dedup_near(fixed + records, cfg.near_threshold, NUM_PERM, keep_first=len(fixed))
        records = records[len(fixed):]
    n_after_dedup = len(records)
    if cfg.max_samples is not None:
        records = records[: cfg.max_samples]

    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
        part = r.pop("_csn_partition", None)
        if base is not None:
            part = "train"
        elif not (cfg.keep_csn_partition and part in SPLITS):
            part = split_of(r["repo"], cfg.seed, cfg.fractions)
        r["partition"] = part
        by_split[part].append(r)

    tmp = _prepare_out(out)
    try:
        jobs_list = []
        copied: dict[str, dict] = {}
        for split, rows in by_split.items():
            (tmp / split).mkdir()
            first = 0
            if base is not None:  # the base's shards, byte for byte, then the new train records after them
                for src, n in base.shards[split]:
                    shutil.copy2(src, tmp / split / src.name)
                    copied[f"{split}/{src.name}"] = {"records": n, "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                                                     "bytes": src.stat().st_size}
                first = len(base.shards[split])
                if not rows:
                    continue
            for i in range(0, max(len(rows), 1), cfg.shard_size):
                lines = [json.dumps({k: r[k] for k in RECORD_FIELDS}, ensure_ascii=False) + "\n" for r in rows[i : i + cfg.shard_size]]
                jobs_list.append((f"{split}/{shard_name(split, first + i // cfg.shard_size)}", lines))
        # zlib releases the GIL, so shards compress in parallel threads.
        with ThreadPoolExecutor(max(1, cfg.jobs or os.cpu_count() or 1)) as ex:
            written = list(progress(ex.map(lambda j: (j[0], *_write_shard(tmp / j[0], j[1])), jobs_list), desc="write", total=len(jobs_list), unit="shard"))
        files = {**copied, **{name: {"records": n, "sha256": h, "bytes": size} for name, n, h, size in written}}
        content = hashlib.sha256("".join(f"{name}:{files[name]['sha256']}\n" for name in sorted(files)).encode()).hexdigest()
        manifest = {
            "format_version": FORMAT_VERSION,
            "tool": "fnbody corpus build",
            "version": __version__,
            "sources": plan.sources or [{"kind": "none"}],
            "config": {**asdict(cfg), "filters": cfg.filters.to_dict(), "fractions": list(cfg.fractions)},
            "counts": {
                "files": {"planned": sum(len(t.files) if t.kind == "files" else 0 for t in plan.tasks),
                          "archives_and_jsonl": sum(t.kind != "files" for t in plan.tasks), **dict(total["files"])},
                "skipped": dict(sorted(total["skips"].items())),
                "skipped_examples": total["examples"],
                "functions": {
                    "extracted": fn_counts.pop("extracted", 0),
                    "filtered": dict(sorted(fn_counts.items())),
                    "after_filters": n_after_filters,
                    "exact_duplicates": n_exact,
                    "near_duplicates": n_near,
                    **({"eval_repo_dropped": n_eval_repo} if base is not None else {}),
                    "after_dedup": n_after_dedup,
                    "final": len(records),
                },
                "splits": _split_counts(by_split, base),
            },
            **({"extends": {"corpus": str(base.path.resolve()), "content_hash": base.manifest.get("content_hash"),
                            "splits": base.manifest.get("counts", {}).get("splits"),
                            "added": {"train": len(records), "repos": len({r["repo"] for r in records})}}}
               if base is not None else {}),
            "files": files,
            "content_hash": f"sha256:{content}",
        }
        with atomic_open(tmp / MANIFEST, "w") as f:
            f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, permissions changed under us, ...
            raise FnbodyError(f"--out {out}: cannot write the corpus ({os_reason(e)})") from None
        raise
    return manifest

"""`fnbody corpus build` and `fnbody corpus stats`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub, groups) -> None:
    """Add the `corpus` command group with `build` and `stats`."""
    p = sub.add_parser("corpus", help="build or inspect a CodeSearchNet-style corpus", description="Build or inspect a CodeSearchNet-style corpus.")
    csub = p.add_subparsers(dest="corpus_command", metavar="WHAT")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    b = csub.add_parser(
        "build", help="extract functions with docstrings into DIR/{train,valid,test}/*.jsonl.gz",
        description="Extract every function or method with a docstring from SOURCEs (folders, .py files, wheels, "
        ".zip/.tar.gz/.tgz archives read in place, CodeSearchNet .jsonl/.jsonl.gz files), apply CodeSearchNet's "
        "filters, deduplicate, split by repo and write CSN-layout shards plus manifest.json. With no SOURCE: the "
        "running interpreter's standard library and site-packages.",
    )
    b.add_argument("sources", nargs="*", metavar="SOURCE", help="folder (its .py files, and the wheels/sdists directly in it), .py, wheel/zip/tar.gz/tgz, or CSN jsonl(.gz); default: stdlib + site-packages")
    b.add_argument("--out", required=True, metavar="DIR", help="corpus folder to write (replaced atomically)")
    b.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: all cores)")
    b.add_argument("--seed", type=int, default=0, help="seed of the repo hash that assigns splits (default 0)")
    b.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VALID,TEST", help="shares of repos per split (default 0.8,0.1,0.1)")
    b.add_argument("--extend", metavar="BASE", default=None,
                   help="add the sources' functions to BASE's train split only: BASE's train/valid/test shards are copied byte for "
                        "byte, and new functions that repeat any BASE function (exactly or nearly) or come from a repo in BASE's "
                        "valid/test are dropped")
    b.add_argument("--keep-csn-partition", action="store_true", help="CSN input keeps its own partition instead of the repo hash")
    b.add_argument("--strict", action="store_true", help="fail at the first bad input (naming file and line) instead of skipping it")
    b.add_argument("--max-file-mb", type=float, default=2.0, help="skip files and archive members larger than this (default 2)")
    b.add_argument("--max-archive-mb", type=float, default=1024.0, help="stop reading an archive after this much uncompressed data (default 1024)")
    b.add_argument("--shard-size", type=int, default=30000, help="records per shard (default 30000, as CSN)")
    b.add_argument("--max-files", type=int, default=None, help="debug cap: read at most this many source files")
    b.add_argument("--max-samples", type=int, default=None, help="debug cap: keep at most this many records")
    f = b.add_argument_group("filters (CodeSearchNet's; each can be switched off)")
    f.add_argument("--keep-tests", action="store_true", help="keep test functions and files under test folders")
    f.add_argument("--keep-dunder", action="store_true", help="keep __dunder__ methods")
    f.add_argument("--keep-stubs", action="store_true", help="keep bodies that are only pass / ... / raise NotImplementedError")
    f.add_argument("--min-code-lines", type=int, default=3, help="drop functions with fewer source lines (default 3; 0 = off)")
    f.add_argument("--min-docstring-tokens", type=int, default=3, help="drop docstrings whose first paragraph has fewer tokens (default 3; 0 = off)")
    f.add_argument("--no-dedup", action="store_true", help="keep exact duplicates (and near duplicates)")
    f.add_argument("--no-near-dedup", action="store_true", help="keep near duplicates")
    f.add_argument("--near-threshold", type=float, default=0.8, help="token-set Jaccard at which functions are near duplicates (default 0.8)")
    b.set_defaults(func=_build)

    s = csub.add_parser("stats", help="counts, token-length distributions, top repos and histograms of a corpus")
    s.add_argument("dir", metavar="DIR", help="corpus folder")
    s.add_argument("--plots", metavar="DIR", default=None, help="write PNG histograms (code and docstring token lengths) here")
    s.add_argument("--top", type=int, default=10, help="how many top repos to list (default 10)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=_stats)


def _fractions(text: str) -> tuple[float, float, float]:
    from fnbody.errors import FnbodyError

    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise FnbodyError(f"--split {text!r}: expected three numbers TRAIN,VALID,TEST such as 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def _build(args: argparse.Namespace) -> int:
    from fnbody.corpus.build import BuildConfig, build_corpus
    from fnbody.corpus.filters import FilterConfig

    cfg = BuildConfig(
        filters=FilterConfig(
            drop_tests=not args.keep_tests, drop_dunder=not args.keep_dunder, drop_stubs=not args.keep_stubs,
            min_code_lines=args.min_code_lines, min_docstring_tokens=args.min_docstring_tokens,
        ),
        exact_dedup=not args.no_dedup, near_dedup=not (args.no_dedup or args.no_near_dedup), near_threshold=args.near_threshold,
        seed=args.seed, fractions=_fractions(args.split), keep_csn_partition=args.keep_csn_partition,
        max_file_mb=args.max_file_mb, max_archive_mb=args.max_archive_mb, shard_size=args.shard_size, strict=args.strict,
        jobs=args.jobs, max_files=args.max_files, max_samples=args.max_samples, extend=args.extend,
    )
    m = build_corpus(args.sources, args.out, cfg)
    c = m["counts"]
    fn = c["functions"]
    splits = ", ".join(f"{s} {v['records']} ({v['repos']} repos)" for s, v in c["splits"].items())
    skipped = ", ".join(f"{k} {v}" for k, v in c["skipped"].items()) or "none"
    total = sum(v["records"] for v in c["splits"].values())
    print(f"corpus: {args.out}: {total} records ({splits})", file=sys.stderr)
    if "extends" in m:
        print(f"  extends {args.extend}: +{fn['final']} train records from {m['extends']['added']['repos']} repos; "
              f"its valid and test are unchanged", file=sys.stderr)
    dropped = f", from the base's valid/test repos -{fn['eval_repo_dropped']}" if "eval_repo_dropped" in fn else ""
    print(f"  extracted {fn['extracted']}, after filters {fn['after_filters']}, exact dups -{fn['exact_duplicates']}, "
          f"near dups -{fn['near_duplicates']}{dropped}; skipped inputs: {skipped}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from fnbody.corpus.stats import corpus_stats, format_stats

    st = corpus_stats(args.dir, plots_dir=args.plots, top=args.top)
    print(json.dumps(st, indent=2) if args.json else format_stats(st))
    return 0

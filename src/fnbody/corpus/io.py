"""Reading a built corpus: `DIR/{train,valid,test}/*.jsonl.gz` plus `DIR/manifest.json`.

This is the contract every later layer (search, models, evaluation, pipeline) reads through.
The builder (`fnbody.corpus.build`) writes it; nothing else does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fnbody.errors import FnbodyError
from fnbody.io import check_format_version, iter_jsonl, read_json

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"

# CodeSearchNet's own fields, in its order.
CSN_FIELDS = (
    "repo", "path", "func_name", "original_string", "language", "code", "code_tokens",
    "docstring", "docstring_tokens", "sha", "url", "partition",
)
# What fnbody adds: the generation task is prompt -> body, and prompt + body == the function's source.
EXTRA_FIELDS = ("signature", "prompt", "body", "lineno")
RECORD_FIELDS = CSN_FIELDS + EXTRA_FIELDS


def shard_name(split: str, index: int) -> str:
    """CSN's shard naming: python_{split}_{index}.jsonl.gz."""
    return f"python_{split}_{index}.jsonl.gz"


def check_corpus(corpus_dir: str | Path) -> dict:
    """Validate that `corpus_dir` is an fnbody corpus of a readable version; return its manifest."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise FnbodyError(f"{corpus_dir}: corpus folder not found; build one with `fnbody corpus build --out {corpus_dir}`")
    manifest_path = corpus_dir / MANIFEST
    if not manifest_path.exists():
        raise FnbodyError(f"{corpus_dir}: not an fnbody corpus (no {MANIFEST}); build one with `fnbody corpus build --out DIR`")
    return check_format_version(read_json(manifest_path), FORMAT_VERSION, corpus_dir, "corpus", "rebuild it with `fnbody corpus build`")


def split_files(corpus_dir: str | Path, split: str) -> list[Path]:
    """The shard files of one split, in order; an error naming the split when there are none."""
    if split not in SPLITS:
        raise FnbodyError(f"unknown split {split!r}; expected one of {SPLITS}")
    files = sorted((Path(corpus_dir) / split).glob("*.jsonl.gz"), key=lambda p: (len(p.name), p.name))
    if not files:
        raise FnbodyError(f"{corpus_dir}: corpus has no {split!r} split (no {split}/*.jsonl.gz)")
    return files


def iter_split(corpus_dir: str | Path, split: str, max_samples: int | None = None) -> Iterator[dict]:
    """Yield the records of one split in their stored (deterministic) order, at most `max_samples`."""
    check_corpus(corpus_dir)
    n = 0
    for path in split_files(corpus_dir, split):
        for _, row in iter_jsonl(path):
            if max_samples is not None and n >= max_samples:
                return
            yield row
            n += 1


def read_split(corpus_dir: str | Path, split: str, max_samples: int | None = None) -> list[dict]:
    """All records of one split (see `iter_split`)."""
    return list(iter_split(corpus_dir, split, max_samples))


def task_id(record: dict) -> str:
    """The stable id of a corpus function in sample files: `repo/path:func_name:lineno`."""
    try:
        return f"{record['repo']}/{record['path']}:{record['func_name']}:{record['lineno']}"
    except KeyError as e:
        raise FnbodyError(f"corpus record lacks {e.args[0]!r}, needed for its task id") from None

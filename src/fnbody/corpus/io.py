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


# What the tools read from every record, checked (cheaply: JSON types only) as records are read.
STR_FIELDS = ("repo", "path", "func_name", "code", "docstring", "prompt", "body")
TOKEN_FIELDS = ("code_tokens", "docstring_tokens")
REBUILD = "rebuild it with `fnbody corpus build`"


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
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise FnbodyError(f"{manifest_path}: not a corpus manifest (a JSON {type(manifest).__name__}, not an object); {REBUILD}")
    check_format_version(manifest, FORMAT_VERSION, corpus_dir, "corpus", REBUILD)
    if not isinstance(manifest.get("files", {}), dict):
        raise FnbodyError(f"{manifest_path}: its \"files\" entry is not an object; {REBUILD}")
    return manifest


def split_files(corpus_dir: str | Path, split: str) -> list[Path]:
    """The shard files of one split, in order, checked against the manifest; an error naming the split when there are none."""
    if split not in SPLITS:
        raise FnbodyError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = check_corpus(corpus_dir)
    files = sorted((Path(corpus_dir) / split).glob("*.jsonl.gz"), key=lambda p: (len(p.name), p.name))
    if "files" in manifest:  # manifests of older builds have no list: nothing to check against
        _check_shards(Path(corpus_dir), split, files, manifest["files"])
    if not files:
        raise FnbodyError(f"{corpus_dir}: corpus has no {split!r} split (no {split}/*.jsonl.gz)")
    return files


def _check_shards(corpus_dir: Path, split: str, files: list[Path], listed: dict) -> None:
    """Every shard the manifest lists for `split` is on disk (with its recorded size), and no other.

    Presence and size only: hashing every shard on every read would be too slow for a large corpus.
    """
    expected = {name.split("/", 1)[1]: info for name, info in listed.items() if name.startswith(f"{split}/")}
    on_disk = {p.name: p for p in files}
    missing = sorted(set(expected) - set(on_disk))
    if missing:
        raise FnbodyError(f"{corpus_dir / split / missing[0]}: shard listed in {MANIFEST} is missing"
                          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; the corpus is incomplete, {REBUILD}")
    extra = sorted(set(on_disk) - set(expected))
    if extra:
        raise FnbodyError(f"{on_disk[extra[0]]}: shard not listed in {corpus_dir / MANIFEST} (left from another build?); "
                          f"remove it or {REBUILD}")
    for name, info in expected.items():
        size = info.get("bytes") if isinstance(info, dict) else None  # older builds recorded no size
        found = on_disk[name].stat().st_size
        if size is not None and found != size:
            raise FnbodyError(f"{on_disk[name]}: {found} bytes, but {MANIFEST} records {size}; "
                              f"the shard was changed or truncated, {REBUILD}")


def check_record(row: dict, where: str) -> dict:
    """`row` when the fields the tools read have their JSON types; else FnbodyError naming `where` and the field."""
    for key in STR_FIELDS:
        if not isinstance(row.get(key), str):
            raise FnbodyError(_field_problem(row, key, "a string", where))
    for key in TOKEN_FIELDS:
        value = row.get(key)
        if not (isinstance(value, list) and all(map(str.__instancecheck__, value))):  # isinstance without a generator: ~2x faster
            raise FnbodyError(_field_problem(row, key, "a list of strings", where))
    lineno = row.get("lineno")
    if lineno is not None and (not isinstance(lineno, int) or isinstance(lineno, bool)):
        raise FnbodyError(_field_problem(row, "lineno", "an integer or null", where))
    return row


def _field_problem(row: dict, key: str, expected: str, where: str) -> str:
    value = row.get(key)
    if key not in row:
        found = "missing"
    elif isinstance(value, list) and expected == "a list of strings":
        found = "a list with a non-string item"
    else:
        found = f"a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}"
    return f"{where}: corpus record field {key!r} is {found}, expected {expected}; the shard is damaged or not an fnbody corpus shard"


_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", dict: "object", list: "list", type(None): "null"}


def iter_shard(path: Path) -> Iterator[dict]:
    """Yield the checked records of one shard file (see `check_record`)."""
    for lineno, row in iter_jsonl(path):
        yield check_record(row, f"{path}:{lineno}")


def iter_split(corpus_dir: str | Path, split: str, max_samples: int | None = None) -> Iterator[dict]:
    """Yield the records of one split in their stored (deterministic) order, at most `max_samples`."""
    if max_samples is not None and max_samples < 0:
        raise FnbodyError(f"--max-samples {max_samples}: must be >= 0")
    n = 0
    for path in split_files(corpus_dir, split):
        for row in iter_shard(path):
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

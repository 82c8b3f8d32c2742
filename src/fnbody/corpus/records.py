"""Worker side of the build: one task (files, an archive, a CSN jsonl) -> filtered CSN-style records.

Runs in pool workers, so everything here is picklable and free of global state except a per-process
MinHash template. Cheap filters run before tokenization: most dropped functions are never tokenized.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import tokenize
from collections import Counter
from dataclasses import dataclass, field

from fnbody.corpus.extract import Function, _cut, _docstring_node, decode_source, functions_from_source
from fnbody.corpus.filters import FilterConfig, function_skip_reason, is_test_path
from fnbody.corpus.io import RECORD_FIELDS
from fnbody.corpus.sources import SkipFile, SourceTask, iter_archive, read_disk_file
from fnbody.tokens.code import code_tokens, docstring_tokens

NUM_PERM = 64  # MinHash permutations: 64 keeps false negatives at Jaccard 0.8 rare and the hashes small
_MAX_EXAMPLES = 5
_CSN_LINE = re.compile(r"#L(\d+)")
_minhash = None


@dataclass
class Options:
    """What a worker needs to know: filters, size limits, strictness, dedup hashing."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    max_bytes: int = 2 << 20
    max_archive_bytes: int = 1 << 30
    strict: bool = False
    near_dedup: bool = True


@dataclass
class TaskResult:
    """Records and counts from one task; `problem` is the first (reason, where) hit in strict mode."""

    records: list[dict] = field(default_factory=list)
    files: Counter = field(default_factory=Counter)  # read, parsed, filtered_test_path, bom, ...
    skips: Counter = field(default_factory=Counter)  # bad-input reason -> count
    functions: Counter = field(default_factory=Counter)  # extracted, and filter reason -> count
    examples: dict = field(default_factory=dict)  # reason -> first few places
    problem: tuple[str, str] | None = None

    def skip(self, reason: str, where: str, strict: bool) -> None:
        """Count one skipped input; in strict mode remember it as the task's problem."""
        self.skips[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _MAX_EXAMPLES:
            ex.append(where)
        if strict and self.problem is None:
            self.problem = (reason, where)


def dedup_keys(tokens: list[str], near: bool) -> dict:
    """Exact key (hash of the normalised token stream) and MinHash of the token set, stored on the record."""
    global _minhash
    keys = {"_exact": hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()}
    if near:
        if _minhash is None:
            from datasketch import MinHash

            _minhash = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32")
        _minhash.clear()
        _minhash.update_batch([t.encode() for t in set(tokens)])
        keys["_minhash"] = _minhash.hashvalues.astype("uint32").tobytes()
    return keys


def _record(fn: Function, repo: str, path: str, opts: Options, res: TaskResult) -> dict | None:
    """A full record for an extracted function, or None when a filter drops it (counted)."""
    res.functions["extracted"] += 1
    dtoks = docstring_tokens(fn.docstring)
    reason = function_skip_reason(opts.filters, fn.name, fn.class_name, fn.code, len(dtoks), fn.body_stmts)
    if reason is None:
        try:
            ctoks = code_tokens(fn.code)
        except (tokenize.TokenError, SyntaxError):
            reason = "tokenize_error"
    if reason is not None:
        res.functions[reason] += 1
        return None
    rec = {
        "repo": repo, "path": path, "func_name": fn.func_name, "original_string": fn.code, "language": "python",
        "code": fn.code, "code_tokens": ctoks, "docstring": fn.docstring, "docstring_tokens": dtoks,
        "sha": None, "url": None, "partition": None,
        "signature": fn.signature, "prompt": fn.prompt, "body": fn.body, "lineno": fn.lineno,
    }
    rec.update(dedup_keys(ctoks, opts.near_dedup))
    return rec


def records_from_bytes(data: bytes, repo: str, path: str, where: str, opts: Options, res: TaskResult) -> None:
    """Decode, parse and extract one file's records into `res`; bad input is skipped and counted."""
    if opts.filters.drop_tests and is_test_path(path):
        res.files["filtered_test_path"] += 1
        return
    if len(data) > opts.max_bytes:
        return res.skip("too_large", where, opts.strict)
    if b"\x00" in data:
        return res.skip("nul_bytes", where, opts.strict)
    try:
        text = decode_source(data)
    except (UnicodeDecodeError, LookupError, SyntaxError):
        return res.skip("not_utf8", where, opts.strict)
    if data.startswith(b"\xef\xbb\xbf"):
        res.files["bom"] += 1
    res.files["read"] += 1
    if "def" not in text:  # no function at all: skip the parse
        return
    try:
        fns = functions_from_source(text, where)
    except (SyntaxError, ValueError):
        return res.skip("syntax_error", where, opts.strict)
    except (RecursionError, MemoryError):
        return res.skip("too_deeply_nested", where, opts.strict)
    res.files["parsed"] += 1
    for fn in fns:
        rec = _record(fn, repo, path, opts, res)
        if rec is not None:
            res.records.append(rec)


def _csn_record(row: object, opts: Options, res: TaskResult) -> dict | str:
    """Re-derive prompt/body/signature for one CSN row and re-apply the filters; a skip reason on failure."""
    if not isinstance(row, dict):
        return "malformed_csn_line"
    code, doc, name = row.get("code", row.get("original_string")), row.get("docstring"), row.get("func_name")
    if not all(isinstance(v, str) for v in (code, doc, name, row.get("repo"), row.get("path"))):
        return "malformed_csn_line"
    for key in ("code_tokens", "docstring_tokens"):
        if key in row and not (isinstance(row[key], list) and all(isinstance(t, str) for t in row[key])):
            return "malformed_csn_line"
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "csn_syntax_error"  # mostly Python 2 code in CSN: no AST, so no prompt/body split
    node = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    docnode = _docstring_node(node) if node is not None else None
    if docnode is None:
        return "csn_no_docstring"
    parts = name.split(".")
    fn = _cut(code.split("\n"), node, docnode, name, parts[-2] if len(parts) > 1 else None)
    if fn is None or not code.startswith(fn.prompt):
        return "csn_no_docstring"
    res.functions["extracted"] += 1
    ctoks = row.get("code_tokens")
    if ctoks is None:
        try:
            ctoks = code_tokens(code)
        except (tokenize.TokenError, SyntaxError):
            ctoks = []
    dtoks = row.get("docstring_tokens")
    if dtoks is None:
        dtoks = docstring_tokens(doc)
    reason = function_skip_reason(opts.filters, parts[-1], fn.class_name, code, len(dtoks), fn.body_stmts)
    if reason is None and opts.filters.drop_tests and is_test_path(row["path"]):
        reason = "test_path"
    if reason is not None:
        res.functions[reason] += 1
        return ""
    m = _CSN_LINE.search(row.get("url") or "")
    rec = {k: row.get(k) for k in RECORD_FIELDS}
    rec.update(
        code=code, original_string=row.get("original_string", code), language="python", code_tokens=ctoks,
        docstring_tokens=dtoks, signature=fn.signature, prompt=fn.prompt, body=code[len(fn.prompt):],
        lineno=int(m.group(1)) if m else None, _csn_partition=row.get("partition"),
    )
    rec.update(dedup_keys(ctoks, opts.near_dedup))
    return rec


def _csn_lines(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from enumerate(f, 1)


def records_from_csn(path: str, opts: Options, res: TaskResult) -> None:
    """Ingest one CSN jsonl(.gz) file, skipping (and counting) malformed lines with file:line."""
    res.files["read"] += 1
    try:
        for lineno, line in _csn_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            out = _csn_record(row, opts, res)
            if isinstance(out, dict):
                res.records.append(out)
            elif out:
                res.skip(out, f"{path}:{lineno}", opts.strict)
            if res.problem:
                return
    except (OSError, EOFError, ValueError) as e:  # truncated/corrupt gzip, unreadable file
        res.skip("unreadable", f"{path} ({type(e).__name__}: {e})", opts.strict)


def run_task(task: SourceTask, opts: Options) -> TaskResult:
    """Process one task in a worker; stops at the first problem in strict mode."""
    res = TaskResult()
    if task.kind == "files":
        for full, repo, rel in task.files:
            if opts.filters.drop_tests and is_test_path(rel):
                res.files["filtered_test_path"] += 1
                continue
            try:
                data = read_disk_file(full, opts.max_bytes)
            except SkipFile as e:
                res.skip(e.reason, e.where, opts.strict)
            else:
                records_from_bytes(data, repo, rel, full, opts, res)
            if res.problem:
                break
    elif task.kind == "archive":
        for name, item in iter_archive(task.path, opts.max_bytes, opts.max_archive_bytes):
            if isinstance(item, SkipFile):
                res.skip(item.reason, item.where, opts.strict)
            else:
                records_from_bytes(item, task.repo, name, f"{task.path}!{name}", opts, res)
            if res.problem:
                break
    elif task.kind == "csn":
        records_from_csn(task.path, opts, res)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return res

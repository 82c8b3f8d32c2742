"""Generate samples for many prompts, resumably: finished tasks are appended to a `.partial` file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.generate.base import GenerationConfig, Generator
from fnbody.io import iter_jsonl
from fnbody.progress import progress


def generate_samples(gen: Generator, rows: list[dict], cfg: GenerationConfig, output: Path, resume: bool = True,
                     reuse_complete: bool = False) -> int:
    """Write `cfg.n` samples per prompt row to `output` (jsonl: task_id, completion, ...); returns the count.

    Rows are processed in batches of `cfg.batch_size`; each finished batch is appended to
    `output.partial` and flushed, so an interrupted run continues from the last finished batch.
    `output` itself appears only when every prompt is done. With `reuse_complete` (and `resume`), an
    `output` that already holds exactly `cfg.n` samples for each of `rows`, in order, is kept as it is: for
    callers whose folder is wiped whenever the settings change (the pipeline's stages), so a rerun after a
    later step failed does not generate again.
    """
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    if resume and reuse_complete and output.exists():
        have = [row.get("task_id") for _, row in iter_jsonl(output, skip_invalid=True)]
        if have == [r["task_id"] for r in rows for _ in range(cfg.n)]:
            return len(have)
    done: set[str] = set()
    if resume and partial.exists():
        for _, row in iter_jsonl(partial, skip_invalid=True):  # a torn last line from a kill is dropped
            done.add(row["task_id"])
    elif partial.exists():
        partial.unlink()
    todo = [r for r in rows if r["task_id"] not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as f, progress(total=len(rows), initial=len(rows) - len(todo), desc="generate", unit="prompt") as bar:
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i:i + cfg.batch_size]
            outs = gen.generate([r["prompt"] for r in batch], cfg)
            if len(outs) != len(batch):
                raise FnbodyError(f"generator returned {len(outs)} results for {len(batch)} prompts")
            for row, completions in zip(batch, outs):
                for c in completions:
                    f.write(json.dumps({
                        "task_id": row["task_id"], "prompt": row["prompt"], "completion": c.text,
                        "finish_reason": c.finish_reason, "mean_logprob": c.mean_logprob, "model": gen.name,
                    }, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    # Order the final file like the input, whatever order batches finished in across resumptions.
    by_task: dict[str, list[dict]] = {}
    for _, row in iter_jsonl(partial, skip_invalid=True):
        by_task.setdefault(row["task_id"], []).append(row)
    from fnbody.io import write_jsonl

    n = write_jsonl(output, (s for r in rows for s in by_task.get(r["task_id"], [])[: cfg.n]))
    partial.unlink()
    return n

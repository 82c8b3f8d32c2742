"""Generate samples for many prompts, resumably: finished tasks are appended to a `.partial` file.

Beside the `.partial` file a small `.partial.json` records what the samples depend on (the generator's
name, the decoding settings, a hash of the prompts, and whatever the caller adds, such as the run folder),
so an unfinished file is only ever continued by the same job: never mixed with another model's samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from fnbody.errors import FnbodyError
from fnbody.generate.base import GenerationConfig, Generator
from fnbody.io import iter_jsonl, read_json, write_json, write_jsonl
from fnbody.progress import progress

PARTIAL_FORMAT = 1
# Settings that do not change which samples are drawn for a prompt: a resumed run may change them (a smaller batch after running out of memory).
_NOT_IDENTITY = ("batch_size",)


def partial_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(the unfinished samples file, its sidecar saying which job it belongs to) for `output`."""
    output = Path(output)
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".partial.json")


def prompts_sha256(rows: list[dict]) -> str:
    """A hash of the (task_id, prompt) pairs, in order."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["task_id"], r["prompt"]]).encode("ascii") + b"\n")  # ASCII escapes: a lone surrogate hashes too
    return h.hexdigest()


def job_identity(gen: Generator, rows: list[dict], cfg: GenerationConfig, job: dict | None = None) -> dict:
    """Everything the samples of a generation job depend on, as plain JSON."""
    decoding = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_IDENTITY}
    ident = {"format_version": PARTIAL_FORMAT, "generator": gen.name, "decoding": decoding,
             "prompts": {"count": len(rows), "sha256": prompts_sha256(rows)}, "job": job or {}}
    return json.loads(json.dumps(ident, default=str))  # tuples become lists, as they come back from the sidecar


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs between two identities, in words ("decoding.n: 2 there, 1 now")."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if name == "prompts" and isinstance(a, dict) and isinstance(b, dict):
            counts = f"{a.get('count')} there, {b.get('count')} now" if a.get("count") != b.get("count") else "other task ids or prompt text"
            out.append(f"the prompts ({counts})")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{name}.")
        elif str(key).endswith("sha256") and isinstance(a, str) and isinstance(b, str):
            out.append(f"{name}: {a[:12]}... there, {b[:12]}... now")
        else:
            out.append(f"{name}: {a!r} there, {b!r} now")
    return out


def _check_partial_belongs(partial: Path, sidecar: Path, ident: dict) -> None:
    """Raise unless the unfinished file was written by the job described by `ident`."""
    both = f" (and {sidecar.name})" if sidecar.exists() else ""
    fix = f"delete {partial}{both} to start again (`fnbody generate --overwrite` does), or write to another output"
    if not sidecar.exists():
        raise FnbodyError(f"{partial}: an unfinished samples file with no {sidecar.name} saying which model and settings made it "
                          f"(an older fnbody, or copied); it cannot be continued safely: {fix}")
    try:
        old = read_json(sidecar)
    except FnbodyError as e:
        raise FnbodyError(f"{e}; it says which job {partial.name} belongs to: {fix}") from None
    if not isinstance(old, dict):
        raise FnbodyError(f"{sidecar}: not a generation record (a JSON {type(old).__name__}): {fix}")
    diffs = _differences(old, ident)
    if diffs:
        raise FnbodyError(f"{partial}: this unfinished output belongs to another generation job, not continued: "
                          f"{'; '.join(diffs)}. To keep it, rerun with its settings; otherwise {fix}")


def _complete_tasks(partial: Path, rows: list[dict], n: int, gen_name: str) -> dict[str, list[dict]]:
    """The tasks of `rows` that the partial file holds whole (exactly `n` samples each).

    A task cut short by a kill (a torn last line, or fewer than `n` samples) is dropped and generated again."""
    wanted = {r["task_id"] for r in rows}
    by_task: dict[str, list[dict]] = {}
    for lineno, row in iter_jsonl(partial, skip_invalid=True):  # a torn last line from a kill is dropped
        if row.get("model") != gen_name:
            raise FnbodyError(f"{partial}:{lineno}: a sample from model {row.get('model')!r}, not {gen_name!r}; "
                              f"delete {partial} to start again")
        if row.get("task_id") in wanted:
            by_task.setdefault(row["task_id"], []).append(row)
    return {t: samples for t, samples in by_task.items() if len(samples) == n}


def generate_samples(gen: Generator, rows: list[dict], cfg: GenerationConfig, output: Path, resume: bool = True,
                     reuse_complete: bool = False, job: dict | None = None) -> int:
    """Write `cfg.n` samples per prompt row to `output` (jsonl: task_id, completion, ...); returns the count.

    Rows are processed in batches of `cfg.batch_size`; each finished batch is appended to
    `output.partial` and flushed, so an interrupted run continues from the last finished batch.
    `output.partial.json` records the job (generator name, decoding settings but the batch size, a hash of
    the prompts, and `job`: what else the caller knows the samples depend on, e.g. the run folder); a
    partial file from any other job, or without that record, is refused, never continued.
    `output` itself appears only when every prompt has exactly `cfg.n` samples. With `reuse_complete` (and
    `resume`), an `output` that already holds exactly `cfg.n` samples of this generator for each of `rows`, in
    order, is kept as it is: for callers whose folder is wiped whenever the settings change (the pipeline's
    stages), so a rerun after a later step failed does not generate again.
    """
    output = Path(output)
    partial, sidecar = partial_paths(output)
    if resume and reuse_complete and output.is_file():
        have = [(row.get("task_id"), row.get("model")) for _, row in iter_jsonl(output, skip_invalid=True)]
        if have == [(r["task_id"], gen.name) for r in rows for _ in range(cfg.n)]:
            return len(have)
    ident = job_identity(gen, rows, cfg, job)
    done: dict[str, list[dict]] = {}
    if resume and partial.exists():
        _check_partial_belongs(partial, sidecar, ident)
        done = _complete_tasks(partial, rows, cfg.n, gen.name)
        # Rewritten with whole tasks only: no torn line for the next append to run into, no half-done task counted twice.
        write_jsonl(partial, (s for r in rows for s in done.get(r["task_id"], [])))
    else:
        partial.unlink(missing_ok=True)
    todo = [r for r in rows if r["task_id"] not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(sidecar, ident)  # before the first sample, so a partial file is never without its record
    with open(partial, "a", encoding="utf-8") as f, progress(total=len(rows), initial=len(rows) - len(todo), desc="generate", unit="prompt") as bar:
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i:i + cfg.batch_size]
            outs = gen.generate([r["prompt"] for r in batch], cfg)
            if len(outs) != len(batch):
                raise FnbodyError(f"generator {gen.name} returned {len(outs)} results for {len(batch)} prompts")
            for row, completions in zip(batch, outs):
                if len(completions) != cfg.n:
                    raise FnbodyError(f"generator {gen.name} returned {len(completions)} completions for task_id "
                                      f"{row['task_id']!r}, not n={cfg.n}")
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
    wrong = [(r["task_id"], len(by_task.get(r["task_id"], []))) for r in rows if len(by_task.get(r["task_id"], [])) != cfg.n]
    if wrong:
        raise FnbodyError(f"{partial}: {len(wrong)} task(s) do not have exactly n={cfg.n} samples (first {wrong[0][0]!r} has "
                          f"{wrong[0][1]}); {output} was not written; delete {partial} to start again")
    n = write_jsonl(output, (s for r in rows for s in by_task[r["task_id"]]))
    partial.unlink()
    sidecar.unlink(missing_ok=True)
    return n

"""Cached, resumable stages that run fnbody commands as child processes with logs.

A stage is skipped when its key (a hash of its own config, the keys of the stages it reads, and
the fnbody version) matches the record of its last successful run and its outputs still exist.
A stage interrupted half-way is simply run again with its key unchanged; training commands get
`--resume` so they continue from their last checkpoint instead of starting over.
Each child writes its output to `DIR/logs/<stage>.log`; its progress bars are echoed live.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fnbody import __version__
from fnbody.config import config_hash
from fnbody.errors import FnbodyError
from fnbody.io import read_json, write_json


class StageFailed(FnbodyError):
    """A stage's command exited non-zero; the message names the stage and its log."""


@dataclass
class Stage:
    """One step of the pipeline: commands to run, what it depends on, what it produces."""

    name: str
    config: dict
    commands: Callable[[bool], list[list[str]]]  # commands(resume) -> argv lists; built when the stage runs
    outputs: list[Path]
    deps: list[str] = field(default_factory=list)
    workdir: Path | None = None  # wiped when the stage's key changed, so stale state never leaks in
    env: dict[str, str] = field(default_factory=dict)


class StageRunner:
    """Runs stages in order, skipping those whose key and outputs are unchanged."""

    def __init__(self, out_dir: Path, echo: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.logs = self.out_dir / "logs"
        self.records = self.out_dir / "stages"
        self.keys: dict[str, str] = {}
        self.echo = echo
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []

    def key(self, stage: Stage) -> str:
        return config_hash({"config": stage.config, "deps": {d: self.keys[d] for d in stage.deps}, "version": __version__})

    def is_fresh(self, stage: Stage, key: str) -> bool:
        rec = self.records / f"{stage.name}.json"
        if not rec.exists():
            return False
        try:
            done = read_json(rec)
        except FnbodyError:
            return False
        return done.get("key") == key and all(Path(p).exists() for p in stage.outputs)

    def run(self, stage: Stage, index: int = 0, total: int = 0) -> bool:
        """Run one stage unless it is fresh; returns True if it ran."""
        missing = [d for d in stage.deps if d not in self.keys]
        if missing:
            raise FnbodyError(f"stage {stage.name!r} needs stages {missing} to run first")
        key = self.key(stage)
        self.keys[stage.name] = key
        tag = f"[{index}/{total}] {stage.name}" if total else stage.name
        if self.is_fresh(stage, key):
            print(f"{tag}: up to date (cached), skipping", file=sys.stderr, flush=True)
            self.skipped.append(stage.name)
            return False
        self.logs.mkdir(parents=True, exist_ok=True)
        self.records.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{stage.name}.log"
        started = self.records / f"{stage.name}.started.json"
        # Same key as an unfinished earlier attempt: continue it. Otherwise start clean.
        resume = started.exists() and read_json(started).get("key") == key
        if not resume and stage.workdir is not None and stage.workdir.exists():
            import shutil

            # Outputs of other settings (or of an attempt that cannot be continued) never mix with this run's: say so.
            print(f"{tag}: removing {stage.workdir}, made with other settings", file=sys.stderr, flush=True)
            shutil.rmtree(stage.workdir)
        write_json(started, {"key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        print(f"{tag}: {'resuming' if resume else 'running'} (log: {log_path})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, **stage.env}
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} stage {stage.name} key {key}\n")
            for cmd in stage.commands(resume):
                log.write("$ " + " ".join(cmd) + "\n")
                log.flush()
                rc = self._run_logged(cmd, log, env)
                if rc != 0:
                    raise StageFailed(f"stage {stage.name!r} failed (exit {rc}) running `{' '.join(cmd[2:] if cmd[:2] == [sys.executable, '-m'] else cmd)}`; see its log: {log_path}")
        self.timings[stage.name] = time.perf_counter() - t0
        write_json(self.records / f"{stage.name}.json", {
            "key": key, "config": stage.config, "deps": stage.deps, "seconds": round(self.timings[stage.name], 1),
            "outputs": [str(p) for p in stage.outputs], "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        started.unlink()
        print(f"{tag}: done in {self.timings[stage.name]:.0f}s", file=sys.stderr, flush=True)
        return True

    def _run_logged(self, cmd: list[str], log, env: dict) -> int:
        """Run `cmd`, copying its output to the log and (progress lines included) to our stderr."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
        assert proc.stdout is not None
        try:
            buf = b""
            while True:
                chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
                if not chunk:
                    break
                if self.echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                buf += chunk
                # The log keeps whole lines only; \r-redrawn progress bars keep just their last state.
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    log.write(line.split(b"\r")[-1].decode("utf-8", "replace") + "\n")
            if buf:
                log.write(buf.split(b"\r")[-1].decode("utf-8", "replace") + "\n")
            return proc.wait()
        except BaseException:
            proc.terminate()  # SIGTERM lets training save a checkpoint
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            log.flush()


def fnbody_cmd(*args: str | os.PathLike) -> list[str]:
    """A command line that runs this same fnbody installation in a child process."""
    return [sys.executable, "-m", "fnbody", *[str(a) for a in args]]

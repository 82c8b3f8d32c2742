"""Run untrusted programs in a separate, limited process: the sandbox behind pass@k.

Each program runs in a fresh `python -I -S` (never in our interpreter), started by a small
launcher that, before any program code runs:

* as root: enters new mount, network, PID and IPC namespaces, mounts private tmpfs over
  /tmp, /var/tmp, /dev/shm, /root, /home and $HOME (the interpreter's own prefix is bound back
  read-through), mounts a fresh /proc, then drops to an unprivileged per-worker uid, so the
  program cannot write outside its working directory, reach any network (not even 127.0.0.1:
  the new namespace has only a downed loopback), see or signal the evaluator's processes, or
  leave processes behind (when the namespace's PID 1 exits the kernel kills the rest);
* as an ordinary user: tries the same inside a new user namespace (no uid change, so files the
  user owns outside the hidden folders stay writable); where even that is refused it falls
  back to resource limits and a process group only. `sandbox_info()` says which holds.

Always: a fresh temporary working directory, a minimal environment (no inherited secrets),
setrlimit on CPU seconds, address space, file size, processes and core dumps, a wall-clock
timeout that SIGKILLs the whole process group, stdout/stderr captured up to a cap (a program
that writes more is killed), and a completion marker on a private pipe so that `sys.exit(0)`
or `os._exit(0)` before the tests finish is not mistaken for a pass.

Two runners start programs (`sandbox_runner()` says which; FNBODY_SANDBOX_RUNNER=process|zygote
overrides): as root, "zygote" keeps one long-lived sandboxed fork server per worker
(`fnbody/evaluate/zygote.py`) that forks each program into fresh mount/IPC/PID namespaces, a fresh
tmpfs working directory and the same limits, without paying for an interpreter start per program;
"process" (the fallback, and the only runner without root) starts the launcher below per program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fnbody.errors import FnbodyError

STATUSES = ("passed", "failed", "timed out", "crashed")
# Unprivileged uids for root mode, one per worker slot, so one sample's fork bomb cannot use up
# another worker's process allowance (RLIMIT_NPROC counts processes per uid).
SANDBOX_UID_BASE = 1_500_000
RESOURCE_ERRORS = ("MemoryError", "RecursionError")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed program."""

    timeout: float = field(default=3.0, metadata={"help": "wall-clock seconds before the process group is killed"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit (RLIMIT_AS), MiB"})
    file_size_mb: int = field(default=16, metadata={"help": "largest file the program may write (RLIMIT_FSIZE), MiB"})
    max_processes: int = field(default=16, metadata={"help": "process limit for the sandbox uid (RLIMIT_NPROC)"})
    output_bytes: int = field(default=64 * 1024, metadata={"help": "stdout+stderr kept; a program writing more is killed"})


@dataclass
class ExecResult:
    """The outcome of one program: status is one of STATUSES; reason says why."""

    status: str
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The launcher runs as `python -I -S -c LAUNCHER CONFIG_LITERAL`; it reports on the status pipe named in the config.
_LAUNCHER = r'''
import os, sys
cfg = eval(sys.argv[1], {"__builtins__": {}})  # a dict literal we wrote; json would cost ~10 ms of imports
ST = cfg["status_fd"]
def _say(msg):
    try:
        os.write(ST, (msg + "\n").encode())
    except OSError:
        pass
src = open("program.py", encoding="utf-8").read()
try:
    mode = cfg["mode"]
    if mode in ("root", "userns"):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def check(rc, what):
            if rc != 0:
                e = ctypes.get_errno()
                raise OSError(e, what + ": " + os.strerror(e))
        def mount(source, target, fstype, flags, data):
            enc = lambda s: None if s is None else s.encode()
            check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + target)
        uid, gid = os.getuid(), os.getgid()
        flags = 0x00020000 | 0x40000000 | 0x20000000 | 0x08000000  # NEWNS | NEWNET | NEWPID | NEWIPC
        if mode == "userns":
            flags |= 0x10000000  # NEWUSER
        check(libc.unshare(flags), "unshare")
        if mode == "userns":
            for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
        MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
        mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        cwd = os.getcwd()
        keep = [p for p in cfg["keep"] if os.path.isdir(p)]
        keep_fds = {p: os.open(p, os.O_PATH) for p in keep + [cwd]}
        for d in cfg["hide"]:
            if not os.path.isdir(d) or os.path.islink(d):
                continue
            mode_bits = "1777" if d in ("/tmp", "/var/tmp", "/dev/shm") else "755"
            mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=" + mode_bits)
        for p, fd in keep_fds.items():
            if not os.path.isdir(p) or not os.listdir(p):
                os.makedirs(p, exist_ok=True)
                mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC, None)
        os.chdir(cwd)
        for fd in keep_fds.values():
            os.close(fd)
    import resource
    pid = os.fork()
    if pid:
        # The launcher stays outside the program's PID namespace and reports how it ended.
        _, st = os.waitpid(pid, 0)
        if os.WIFSIGNALED(st):
            _say("signal %d" % os.WTERMSIG(st))
            os._exit(128 + os.WTERMSIG(st))
        os._exit(os.WEXITSTATUS(st))
    if mode in ("root", "userns"):
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV, None)
        except OSError:
            pass
    lim = cfg["limits"]
    for res, value in ((resource.RLIMIT_AS, lim["as"]), (resource.RLIMIT_FSIZE, lim["fsize"]), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, lim["nproc"])):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
    if mode == "root":
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if mode != "none":
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the launcher
except BaseException as e:
    _say("setup-error %s: %s" % (type(e).__name__, e))
    os._exit(120)
code = compile(src, "program.py", "exec")
del src, cfg
env = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
exec(code, env)
sys.stdout.flush()
_say("done")
'''


def _hidden_dirs() -> list[str]:
    home = os.path.expanduser("~")
    dirs = ["/root", "/home", "/tmp", "/var/tmp", "/dev/shm"]
    if home not in ("/", "") and home not in dirs:
        dirs.append(home)
    return dirs


def _keep_dirs() -> list[str]:
    """Folders the interpreter needs at run time (stdlib, extension modules), bound back in."""
    paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    return sorted(p for p in paths if p)


def _launch_config(mode: str, limits: Limits, slot: int, status_fd: int) -> str:
    return repr({
        "mode": mode,
        "status_fd": status_fd,
        "uid": SANDBOX_UID_BASE + slot,
        "hide": _hidden_dirs(),
        "keep": _keep_dirs(),
        "limits": _rlimits(limits),
    })


def _minimal_env(workdir: str) -> dict[str, str]:
    # Nothing from our environment is passed on: API keys and tokens stay with us.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=retry)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_program(source: str, limits: Limits = Limits(), slot: int = 0, mode: str | None = None,
                runner: str | None = None) -> ExecResult:
    """Run one Python program in the sandbox and classify how it ended."""
    mode = mode or sandbox_mode()
    if (runner or sandbox_runner()) == "zygote":
        with Zygote(slot) as z:
            return z.run(source, limits)
    workdir = tempfile.mkdtemp(prefix="fnbody-sandbox-")
    try:
        Path(workdir, "program.py").write_text(source, encoding="utf-8")
        if mode == "root":
            os.chown(workdir, SANDBOX_UID_BASE + slot, SANDBOX_UID_BASE + slot)
        status_r, status_w = os.pipe()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, _launch_config(mode, limits, slot, status_w)],
                cwd=workdir, env=_minimal_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True,
            )
        finally:
            os.close(status_w)
        out, err, status, why = _collect(proc, status_r, start + limits.timeout, limits.output_bytes)
        seconds = time.monotonic() - start
    finally:
        _rmtree(workdir)
    return _classify(proc.returncode, out, err, status, why, limits, seconds)


ZYGOTE_SCRIPT = str(Path(__file__).with_name("zygote.py"))
ZYGOTE_START_TIMEOUT = 30.0  # seconds for the fork server to start (a busy machine can be slow)
ZYGOTE_REPLY_TIMEOUT = 10.0  # seconds for it to answer a request with a forked supervisor
KILL_GRACE = 2.0  # seconds to wait for a killed program's pipes to close


class Zygote:
    """One worker's long-lived sandboxed fork server (root only); restarted whenever it dies or stops answering."""

    def __init__(self, slot: int = 0):
        self.slot = slot
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.starts = 0
        self._count = 0

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the fork server and wait for its "ready" (FnbodyError if it cannot set up)."""
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = repr({"sock_fd": theirs.fileno(), "uid": SANDBOX_UID_BASE + self.slot, "hide": _hidden_dirs(),
                    "keep": _keep_dirs(), "preload": _zygote_preload()})
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", ZYGOTE_SCRIPT, cfg], cwd="/", env=_minimal_env("/"),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        self.sock = ours
        self.starts += 1
        try:
            ours.settimeout(ZYGOTE_START_TIMEOUT)
            msg = ours.recv(4096)
        except OSError as e:
            msg = f"no answer ({e})".encode()
        if msg != b"ready":
            self.close()
            raise FnbodyError(f"sandbox zygote failed to start: {msg.decode(errors='replace') or 'it exited'}")

    def close(self) -> None:
        """Stop the fork server (programs already finished; nothing of theirs survives it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def _request(self, header: bytes, fds: list[int]) -> int | None:
        """Send one program; return a pidfd for its supervisor, or None when the zygote is gone or stuck."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.sock.settimeout(ZYGOTE_REPLY_TIMEOUT)
            socket.send_fds(self.sock, [header], fds)
            msg, got, _, _ = socket.recv_fds(self.sock, 256, 1)
        except OSError:
            return None
        if msg == b"ok" and len(got) == 1:
            return got[0]
        for fd in got:
            os.close(fd)
        return None

    def run(self, source: str, limits: Limits = Limits()) -> ExecResult:
        """Run one program through the fork server and classify how it ended."""
        for attempt in range(2):
            self._count += 1
            header = repr({"index": self._count, "limits": _rlimits(limits)}).encode()
            memfd = os.memfd_create("program.py")
            data = memoryview(source.encode("utf-8"))
            while data:
                data = data[os.write(memfd, data):]
            os.lseek(memfd, 0, os.SEEK_SET)
            (out_r, out_w), (err_r, err_w), (st_r, st_w) = os.pipe(), os.pipe(), os.pipe()
            start = time.monotonic()
            try:
                pidfd = self._request(header, [memfd, out_w, err_w, st_w])
            finally:
                for fd in (memfd, out_w, err_w, st_w):
                    os.close(fd)
            if pidfd is None:
                # The zygote died (a killed fork server is never a program's doing: programs cannot see it) or hung:
                # restart it and try once more; the program had not started.
                for fd in (out_r, err_r, st_r):
                    os.close(fd)
                self.close()
                if attempt:
                    raise FnbodyError("sandbox zygote stopped answering twice in a row")
                continue
            try:
                out, err, status, why, closed = _drain((out_r, err_r, st_r), start + limits.timeout, limits.output_bytes,
                                                       kill=lambda: _pidfd_kill(pidfd))
            finally:
                for fd in (pidfd, out_r, err_r, st_r):
                    os.close(fd)
            seconds = time.monotonic() - start
            if not closed:
                self.close()  # something outlived SIGKILL's grace: start afresh for the next program
            return _classify(_status_returncode(status), out, err, status, why, limits, seconds)
        raise AssertionError("unreachable")


def _zygote_preload() -> tuple[str, ...]:
    from fnbody.evaluate import zygote

    return zygote.PRELOAD


def _rlimits(limits: Limits) -> dict[str, int]:
    return {"as": limits.memory_mb << 20, "fsize": limits.file_size_mb << 20, "nproc": limits.max_processes,
            "cpu": max(1, math.ceil(limits.timeout))}


def _pidfd_kill(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _status_returncode(status: str) -> int | None:
    """The program's exit status from the supervisor's report (128+N for signal N, as the launcher exits)."""
    for ln in status.splitlines():
        if ln.startswith("exit "):
            return int(ln.split()[1])
        if ln.startswith("signal "):
            return 128 + int(ln.split()[1])
    return None


def _drain(fds: tuple[int, int, int], deadline: float, cap: int,
           kill: Callable[[], None]) -> tuple[bytes, bytes, str, str, bool]:
    """Read stdout, stderr and status until all close; past the deadline or the output cap, kill and drain briefly.

    Returns (stdout, stderr, status, why, closed): why is "" (ended by itself), "timeout" or "output"; closed is
    False when the pipes stayed open even KILL_GRACE seconds after the kill. The caller closes the fds."""
    out_fd, err_fd, status_r = fds
    bufs = {fd: bytearray() for fd in fds}
    sel = selectors.DefaultSelector()
    for fd in fds:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    why = ""
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if why:
                    break
                why = "timeout"
                kill()
                deadline = time.monotonic() + KILL_GRACE
                continue
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                if why:
                    continue  # killed: only waiting for the pipes to close
                bufs[key.fd] += chunk
                over = len(bufs[out_fd]) + len(bufs[err_fd]) > cap if key.fd != status_r else len(bufs[status_r]) > 4096
                if over:
                    why = "output"
                    kill()
                    deadline = time.monotonic() + KILL_GRACE
        closed = not sel.get_map()
    finally:
        sel.close()
    return bytes(bufs[out_fd][:cap]), bytes(bufs[err_fd][:cap]), bufs[status_r].decode("utf-8", "replace"), why, closed


def _collect(proc: subprocess.Popen, status_r: int, deadline: float, cap: int) -> tuple[bytes, bytes, str, str]:
    """Read the launcher's stdout, stderr and status pipe until all close, the deadline passes or output overflows."""
    try:
        out, err, status, why, _ = _drain((proc.stdout.fileno(), proc.stderr.fileno(), status_r), deadline, cap,
                                          kill=lambda: _kill_group(proc))
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        except subprocess.TimeoutExpired:
            why = why or "timeout"
            _kill_group(proc)
            proc.wait()
        # The launcher is gone; anything left in its group (no-namespace mode) goes with it.
        _kill_group(proc)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        os.close(status_r)
    return out, err, status, why


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _classify(rc: int | None, out: bytes, err: bytes, status: str, why: str, limits: Limits, seconds: float) -> ExecResult:
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    lines = status.splitlines()

    def result(st: str, reason: str) -> ExecResult:
        return ExecResult(st, reason, rc, stdout, stderr, round(seconds, 4))

    setup = [ln for ln in lines if ln.startswith("setup-error")]
    if setup:
        raise FnbodyError(f"sandbox setup failed: {setup[0][len('setup-error '):]}")
    if why == "timeout":
        return result("timed out", f"wall-clock limit of {limits.timeout:g} s")
    if why == "output":
        return result("crashed", f"output over the {limits.output_bytes}-byte limit")
    signals = [int(ln.split()[1]) for ln in lines if ln.startswith("signal ")]
    if signals or (rc is not None and rc < 0):
        num = signals[-1] if signals else -rc
        if num == signal.SIGXCPU:
            return result("timed out", f"CPU limit of {math.ceil(limits.timeout)} s (SIGXCPU)")
        return result("crashed", f"killed by {_signal_name(num)}")
    if rc == 0 and "done" in lines:
        return result("passed", "")
    if rc == 0:
        return result("failed", "program exited before its tests finished (exit status 0)")
    last = _last_line(stderr)
    if last.startswith(RESOURCE_ERRORS):
        extra = f" (address-space limit {limits.memory_mb} MiB)" if last.startswith("MemoryError") else ""
        return result("crashed", last + extra)
    return result("failed", last or f"exit status {rc}")


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """The strongest isolation this machine allows: "root", "userns" or "none" (probed once)."""
    candidates = ("root",) if os.geteuid() == 0 else ("userns",)
    for mode in candidates:
        try:
            r = run_program("print('ok')", Limits(timeout=10), mode=mode, runner="process")
        except FnbodyError:
            continue
        if r.passed and r.stdout.strip() == "ok":
            return mode
    return "none"


@functools.lru_cache(maxsize=1)
def sandbox_runner() -> str:
    """How programs are started: "zygote" (per-worker fork server, root only) or "process" (an interpreter per program).

    FNBODY_SANDBOX_RUNNER=process|zygote chooses; otherwise the zygote where it works, else the process runner."""
    want = os.environ.get("FNBODY_SANDBOX_RUNNER", "").strip() or "auto"
    if want not in ("auto", "zygote", "process"):
        raise FnbodyError(f"FNBODY_SANDBOX_RUNNER={want!r}: expected 'zygote', 'process' or 'auto'")
    if want == "process":
        return "process"
    if sandbox_mode() != "root" or not hasattr(os, "pidfd_open"):
        if want == "zygote":
            raise FnbodyError(f"FNBODY_SANDBOX_RUNNER=zygote needs root and pidfds; this sandbox mode is {sandbox_mode()!r}")
        return "process"
    try:
        r = run_program("print('ok')", Limits(timeout=10), runner="zygote")
    except FnbodyError:
        if want == "zygote":
            raise
        return "process"
    if r.passed and r.stdout.strip() == "ok":
        return "zygote"
    if want == "zygote":
        raise FnbodyError(f"sandbox zygote probe did not pass: {r.status} {r.reason}")
    return "process"


def sandbox_info() -> dict:
    """What the sandbox guarantees on this machine, in words, for summaries and reports."""
    mode = sandbox_mode()
    runner = sandbox_runner()
    ns = mode in ("root", "userns")
    return {
        "mode": mode,
        "runner": runner,
        "process": {
            "zygote": "per-worker python -I -S fork server in its own network namespace; each program is a fresh fork "
                      "(own mount/IPC/PID namespaces, tmpfs working directory, session), PID 1 of its namespace, "
                      "killed with its whole namespace on timeout",
            "process": "separate python -I -S process per program, own session/process group, killed as a group on timeout",
        }[runner],
        "network": "isolated (new network namespace, loopback down)" if ns else "NOT isolated (no namespaces allowed here)",
        "filesystem": {
            "root": "unprivileged uid; private tmpfs over /tmp, /var/tmp, /dev/shm, /root, /home, $HOME",
            "userns": "private tmpfs over /tmp, /var/tmp, /dev/shm, /root, /home, $HOME; same uid, so other files the user owns stay writable",
            "none": "same uid, no filesystem isolation beyond a fresh working directory",
        }[mode],
        "processes": {
            "root": "new PID namespace (leftover processes die with it), RLIMIT_NPROC on a per-worker uid",
            "userns": "new PID namespace (leftover processes die with it), RLIMIT_NPROC counts all of the user's processes",
            "none": "RLIMIT_NPROC counts all of the user's processes; a process that leaves the group can survive",
        }[mode],
        "limits": "RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_CORE=0, output cap",
        "environment": "minimal (PATH, HOME, TMPDIR, LANG); nothing inherited",
    }


def run_programs(sources: Sequence[str], limits: Limits = Limits(), workers: int | None = None,
                 on_done: Callable[[int, ExecResult], None] | None = None, runner: str | None = None) -> list[ExecResult]:
    """Run many programs in parallel sandboxes; results come back in input order."""
    workers = max(1, workers or os.cpu_count() or 1)
    mode = sandbox_mode()
    runner = runner or sandbox_runner()
    slots: queue.Queue[int] = queue.Queue()
    for s in range(workers):
        slots.put(s)
    zygotes = [Zygote(s) for s in range(workers)] if runner == "zygote" else []

    def one(i: int) -> ExecResult:
        slot = slots.get()
        try:
            if zygotes:
                return zygotes[slot].run(sources[i], limits)
            return run_program(sources[i], limits, slot=slot, mode=mode, runner="process")
        finally:
            slots.put(slot)

    results: list[ExecResult | None] = [None] * len(sources)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(one, i): i for i in range(len(sources))}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_done is not None:
                    on_done(i, results[i])
    finally:
        for z in zygotes:
            z.close()
    return results  # type: ignore[return-value]


def limits_signature(limits: Limits) -> str:
    """A short string naming the limits, for metric signatures."""
    return f"timeout:{limits.timeout:g}s|mem:{limits.memory_mb}M|nproc:{limits.max_processes}|sandbox:{sandbox_mode()}"


def limits_from_dict(d: dict) -> Limits:
    """Build Limits from a dict (unknown keys rejected by name)."""
    names = {f.name for f in dataclasses.fields(Limits)}
    bad = set(d) - names
    if bad:
        raise FnbodyError(f"unknown sandbox limit(s) {sorted(bad)}; expected {sorted(names)}")
    return Limits(**d)

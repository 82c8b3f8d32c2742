"""Hostile programs are contained: the evaluator survives, the right failure is reported, nothing
outside the sandbox changes, and the whole batch finishes in bounded time."""

import os
import socket
import textwrap
import time

import pytest

from fnbody.evaluate.execution import Limits, run_program, run_programs, sandbox_info, sandbox_mode

LIMITS = Limits(timeout=2.0, memory_mb=512, max_processes=8, output_bytes=16 * 1024)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A fake home with a file hostile programs try to change, and a listening socket they try to reach."""
    home = tmp_path_factory.mktemp("home")
    (home / "keep.txt").write_text("precious")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield home, srv.getsockname()[1]
    srv.close()


def _hostile(home, port):
    keep = home / "keep.txt"
    return {
        "infinite loop": ("while True:\n    pass", "timed out", None),
        "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "timed out", None),
        "memory bomb": ("x = bytearray(1 << 33)", "crashed", "MemoryError"),
        "recursion bomb": ("def f():\n    return f()\nf()", "crashed", "RecursionError"),
        "huge output": ("while True:\n    print('x' * 10000)", "crashed", "output"),
        "write outside": (f"open({str(home / 'new.txt')!r}, 'w').write('x')\nopen({str(keep)!r}, 'w').write('gone')", "failed", None),
        "delete outside": (f"import os\nos.remove({str(keep)!r})", "failed", None),
        "os.system": (f"import os\nassert os.system('rm -f {keep}; echo pwned > {home}/sys.txt') == 0\nassert not os.path.exists({str(keep)!r})", "failed", None),
        "subprocess": (f"import subprocess\nsubprocess.run(['rm', {str(keep)!r}], check=True)", "failed", None),
        "socket": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", "failed", "OSError"),
        "env": ("import os\nassert 'FNBODY_TEST_SECRET' not in os.environ, 'leak'\nprint(sorted(os.environ))", "passed", None),
        "sys.exit(0)": ("import sys\nsys.exit(0)\nassert False", "failed", "exited before"),
        "os._exit(0)": ("import os\nos._exit(0)", "failed", "exited before"),
        "kill parent": ("import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\nassert 1 == 2", "failed", "AssertionError"),
        "ignore SIGTERM": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)", "timed out", None),
        "background child": ("import subprocess\nsubprocess.Popen(['sleep', '30'], start_new_session=True)", "passed", None),
    }


def test_hostile_programs_are_contained(outside, monkeypatch):
    home, port = outside
    monkeypatch.setenv("FNBODY_TEST_SECRET", "hunter2")
    cases = _hostile(home, port)
    start = time.monotonic()
    results = run_programs([src for src, _, _ in cases.values()], LIMITS, workers=4)
    elapsed = time.monotonic() - start
    for (name, (_, status, reason)), r in zip(cases.items(), results):
        assert r.status == status, (name, r)
        if reason:
            assert reason in r.reason, (name, r.reason)
    assert (home / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in home.iterdir()) == ["keep.txt"]
    env_out = results[list(cases).index("env")].stdout
    assert "FNBODY_TEST_SECRET" not in env_out and "hunter2" not in env_out
    # 16 programs, 4 workers, 2 s timeout: at most ~3 rounds of timeouts plus start-up.
    assert elapsed < 20, elapsed
    assert os.getpid() > 0  # still here: the kill-parent program did not take us down


def test_background_processes_do_not_outlive_the_program():
    if sandbox_mode() == "none":
        pytest.fail("no PID namespace here; sandbox_info() must say leftover processes can survive")
    r = run_program("import subprocess\np = subprocess.Popen(['sleep', '30'])\nopen('pid', 'w').write(str(p.pid))\nprint(p.pid)", LIMITS)
    assert r.passed
    # The child lived in the program's PID namespace; no 'sleep 30' from the sandbox uid survives.
    time.sleep(0.2)
    survivors = [d for d in os.listdir("/proc") if d.isdigit() and _cmd(d) == "sleep\x0030\x00" and _uid(d) >= 1_500_000]
    assert survivors == []


def _cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def test_results_are_classified_and_info_is_honest():
    ok = run_program("print('hello')", LIMITS)
    assert ok.status == "passed" and ok.stdout == "hello\n"
    bad = run_program("raise ValueError('boom')", LIMITS)
    assert bad.status == "failed" and bad.reason == "ValueError: boom"
    cpu = run_program("while True: pass", Limits(timeout=1.0))
    assert cpu.status == "timed out"
    info = sandbox_info()
    assert info["mode"] == sandbox_mode()
    if os.geteuid() == 0:
        assert info["mode"] == "root" and info["network"].startswith("isolated")

"""The per-worker fork server ("zygote") keeps every guarantee of the per-program process: nothing one
program does (files, monkeypatching, leftover processes, killing what it can see) reaches the next
program in the same worker; a dead zygote is restarted; the process runner still works as fallback."""

import os
import signal
import time

import pytest
from test_eval_sandbox import LIMITS, _hostile

from fnbody.errors import FnbodyError
from fnbody.evaluate.execution import Limits, Zygote, run_programs, sandbox_info, sandbox_mode, sandbox_runner


@pytest.fixture
def zygote():
    if os.geteuid() != 0:
        pytest.fail("the zygote runner needs root; as a user sandbox_runner() must say 'process'")
    with Zygote(slot=3) as z:
        yield z


WRITER = """
import builtins, math, os, sys, collections
open('leak.txt', 'w').write('x')
for d in ('/tmp', '/dev/shm', '/var/tmp'):
    open(os.path.join(d, 'leak.txt'), 'w').write('x')
math.pi = 3
collections.Counter = None
builtins.LEAK = 1
sys.modules['leaky'] = math
os.environ['LEAK'] = '1'
sys.setrecursionlimit(60)
print(os.getcwd())
"""

READER = """
import builtins, math, os, sys, collections
for d in ('.', '/tmp', '/dev/shm', '/var/tmp'):
    assert not os.path.exists(os.path.join(d, 'leak.txt')), d
assert not any(name.endswith('leak.txt') for _, _, files in os.walk('/tmp') for name in files)
assert math.pi > 3.14 and collections.Counter('aab')['a'] == 2
assert not hasattr(builtins, 'LEAK') and 'leaky' not in sys.modules and 'LEAK' not in os.environ
assert sys.getrecursionlimit() == 1000
import __main__
assert not hasattr(__main__, 'WRITER') and not hasattr(__main__, 'main')
print(os.getcwd())
"""


def test_state_does_not_leak_between_programs_in_one_worker(zygote):
    first = zygote.run(WRITER, LIMITS)
    second = zygote.run(READER, LIMITS)
    assert first.passed, first
    assert second.passed, (second.reason, second.stderr)
    assert zygote.starts == 1  # both ran through the same fork server
    assert first.stdout != second.stdout  # and each had its own fresh working directory


def test_killing_everything_visible_does_not_harm_the_next_program(zygote):
    zygote.start()
    pid = zygote.pid
    hostile = ("import os, signal\n"
               "for p in [os.getppid(), 0, -1, 1] + [int(d) for d in os.listdir('/proc') if d.isdigit()]:\n"
               "    try:\n        os.kill(p, signal.SIGKILL)\n    except OSError:\n        pass\n"
               "print(os.getpid(), os.getppid())\nassert 1 == 2")
    r = zygote.run(hostile, LIMITS)
    assert r.status == "failed" and "AssertionError" in r.reason, r
    assert r.stdout.split() == ["1", "0"]  # PID 1 of its own namespace: the zygote is out of sight
    assert zygote.run("print('next')", LIMITS).stdout == "next\n"
    assert zygote.pid == pid and zygote.starts == 1


def test_a_dead_zygote_is_restarted(zygote):
    assert zygote.run("print(1)", LIMITS).passed
    os.kill(zygote.pid, signal.SIGKILL)
    r = zygote.run("print(2)", LIMITS)
    assert r.passed and r.stdout == "2\n"
    assert zygote.starts == 2


def test_zygote_killed_mid_program_reports_the_program(zygote):
    # The fork server dies while a program runs: the program's own supervisor still reports it, and the next
    # request starts a new zygote.
    killer = "import time\ntime.sleep(0.3)\nprint('survived')"
    assert zygote.run("pass", LIMITS).passed
    import threading

    t = threading.Timer(0.1, os.kill, (zygote.pid, signal.SIGKILL))
    t.start()
    r = zygote.run(killer, LIMITS)
    t.join()
    assert r.passed and r.stdout == "survived\n", r
    assert zygote.run("print(3)", LIMITS).stdout == "3\n" and zygote.starts == 2


def test_timed_out_fork_bomb_leaves_nothing_for_the_next_program(zygote):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    r = zygote.run(bomb, Limits(timeout=1.0, max_processes=8))
    assert r.status == "timed out" and time.monotonic() - start < 4
    # Same uid, same process allowance: the bomb's processes must be gone for this to fit in 8.
    nxt = zygote.run("import subprocess\nfor _ in range(4):\n    subprocess.run(['true'], check=True)\nprint('ok')",
                     Limits(timeout=3.0, max_processes=8))
    assert nxt.passed and nxt.stdout == "ok\n", nxt


def test_process_runner_fallback_contains_hostile_programs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep.txt").write_text("precious")
    cases = _hostile(home, 9)  # nothing listens on port 9; the socket case fails either way
    results = run_programs([src for src, _, _ in cases.values()], LIMITS, workers=4, runner="process")
    for (name, (_, status, reason)), r in zip(cases.items(), results):
        assert r.status == status, (name, r)
        if reason:
            assert reason in r.reason, (name, r.reason)
    assert sorted(p.name for p in home.iterdir()) == ["keep.txt"]
    assert (home / "keep.txt").read_text() == "precious"


def test_runner_is_reported_and_selectable(monkeypatch):
    info = sandbox_info()
    assert info["runner"] == sandbox_runner()
    if sandbox_mode() == "root":
        assert info["runner"] == "zygote" and "fork server" in info["process"]
    try:
        monkeypatch.setenv("FNBODY_SANDBOX_RUNNER", "process")
        sandbox_runner.cache_clear()
        assert sandbox_info()["runner"] == "process"
        monkeypatch.setenv("FNBODY_SANDBOX_RUNNER", "fast")
        sandbox_runner.cache_clear()
        with pytest.raises(FnbodyError, match="FNBODY_SANDBOX_RUNNER='fast'"):
            sandbox_runner()
    finally:
        monkeypatch.undo()
        sandbox_runner.cache_clear()
    assert sandbox_runner() == info["runner"]

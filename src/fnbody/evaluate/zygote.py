"""The sandbox's per-worker fork server ("zygote"), run as `python -I -S zygote.py CONFIG_LITERAL` as root.

Starting a fresh interpreter per program costs more than running most HumanEval programs, so each
worker starts one of these once. It enters a new network namespace (loopback down), imports the
stdlib modules programs commonly use, tells the evaluator "ready" on its socket and then serves
requests, one at a time: a request carries the program (a memfd), fresh stdout/stderr/status pipes
and the limits. For each request it forks a *supervisor* and hands the evaluator a pidfd for it
(SIGKILL on that pidfd is the evaluator's wall-clock kill). The supervisor:

* enters new mount, IPC and PID namespaces of its own, mounts fresh private tmpfs over /tmp,
  /var/tmp, /dev/shm, /root, /home and $HOME (binding the interpreter's folders back), and makes a
  fresh working directory inside the new /tmp: nothing one program writes is seen by the next;
* forks the program as PID 1 of the new PID namespace: when it ends, the kernel kills every process
  it left behind, and it cannot see or signal the zygote, the supervisor or the evaluator;
* the program mounts its own /proc, gets stdin=/dev/null and the pipes, a new session, the rlimits
  (CPU, address space, file size, processes, no core), drops to the worker's unprivileged uid, sets
  PR_SET_PDEATHSIG so it dies with the supervisor, closes every other descriptor, then runs;
* waits for it and writes "exit N" or "signal N" on the status pipe; the program itself writes
  "done" there only after its code returned.

Forked children start from the zygote's memory (copy on write), so one program's monkeypatching
never reaches another; `random` reseeds itself after fork. Stdlib only: no fnbody imports here.
"""

import os
import sys

NEWNS, NEWNET, NEWPID, NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PATH = "/usr/local/bin:/usr/bin:/bin"
# Imported once here so that programs find them already loaded (HumanEval imports mostly these).
PRELOAD = ("typing", "math", "random", "copy", "string", "collections", "re", "hashlib", "itertools", "functools",
           "heapq", "bisect", "operator", "fractions", "decimal", "statistics", "dataclasses", "json", "types",
           "traceback", "linecache", "atexit", "threading", "subprocess", "signal", "select", "resource", "socket")


def _say(fd, msg):
    try:
        os.write(fd, (msg + "\n").encode())
    except OSError:
        pass


class _Sys:
    """libc calls the os module lacks (unshare, mount, prctl), failing loudly with errno."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def check(self, rc, what):
        if rc != 0:
            e = self.ctypes.get_errno()
            raise OSError(e, what + ": " + os.strerror(e))

    def unshare(self, flags):
        self.check(self.libc.unshare(flags), "unshare")

    def mount(self, source, target, fstype, flags, data):
        enc = lambda s: None if s is None else s.encode()
        self.check(self.libc.mount(enc(source), enc(target), enc(fstype), self.ctypes.c_ulong(flags), enc(data)),
                   "mount " + target)

    def pdeathsig(self, sig):
        self.check(self.libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl")


def _hide(sc, hide, keep):
    """Fresh tmpfs over each hidden folder; the interpreter's own folders are bound back read-through."""
    sc.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    keep = [p for p in keep if os.path.isdir(p)]
    keep_fds = {p: os.open(p, os.O_PATH) for p in keep}
    for d in hide:
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        bits = "1777" if d in ("/tmp", "/var/tmp", "/dev/shm") else "755"
        sc.mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=" + bits)
    for p, fd in keep_fds.items():
        if not os.path.isdir(p) or not os.listdir(p):
            os.makedirs(p, exist_ok=True)
            sc.mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC, None)
        os.close(fd)


def _exit_code(e):
    # What the interpreter does with an uncaught SystemExit.
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _run_user_code(src, status_fd):
    """Run the program as __main__ and end the process the way `python program.py` would."""
    import types

    main = types.ModuleType("__main__")
    main.__file__ = "program.py"
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["program.py"]
    rc = 0
    try:
        code = compile(src, "program.py", "exec")
        del src
        exec(code, main.__dict__)
        sys.stdout.flush()
        _say(status_fd, "done")
    except SystemExit as e:
        rc = _exit_code(e)
    except BaseException:
        t, v, tb = sys.exc_info()
        try:
            v = v.with_traceback(tb.tb_next or tb)  # drop this frame: show what `python program.py` would
            sys.excepthook(t, v, v.__traceback__)
        except BaseException:
            pass
        rc = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # wait for non-daemon threads, as interpreter exit does
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except SystemExit as e:
        rc = _exit_code(e)
    except BaseException:
        rc = rc or 120
    os._exit(rc)


def _program(sc, req, src, workdir, fds, life_r):
    """PID 1 of the new namespace: finish isolating, then become the program."""
    import resource

    out_w, err_w, st_w = fds
    try:
        try:
            sc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV, None)
        except OSError:
            pass
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.setsid()
        lim = req["limits"]
        for res, value in ((resource.RLIMIT_AS, lim["as"]), (resource.RLIMIT_FSIZE, lim["fsize"]),
                           (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, lim["nproc"])):
            resource.setrlimit(res, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
        uid = req["uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        sc.pdeathsig(9)  # after setuid: a credential change clears it
        import select

        # The supervisor may have died before PDEATHSIG was armed: its end of this pipe is then closed.
        if select.select([life_r], [], [], 0)[0]:
            os._exit(137)
        keep = sorted({0, 1, 2, st_w})
        for lo, hi in zip([-1] + keep, keep + [os.sysconf("SC_OPEN_MAX")]):
            if hi > lo + 1:  # os.closerange(n, n) would close everything from n up (close_range(n, n - 1))
                os.closerange(lo + 1, hi)
        os.environ.clear()
        os.environ.update({"PATH": PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    except BaseException as e:
        _say(st_w, "setup-error %s: %s" % (type(e).__name__, e))
        os._exit(120)
    _run_user_code(src, st_w)


def _supervise(sc, cfg, header, fds):
    """Runs in a fresh fork of the zygote: new namespaces, one program, its exit status on the status pipe."""
    memfd, out_w, err_w, st_w = fds
    try:
        req = eval(header.decode(), {"__builtins__": {}})
        req["uid"] = cfg["uid"]
        with os.fdopen(memfd, "rb") as f:
            src = f.read().decode("utf-8")
        sc.unshare(NEWNS | NEWIPC | NEWPID)
        _hide(sc, cfg["hide"], cfg["keep"])
        workdir = "/tmp/fnbody-sandbox-%d" % req["index"]
        os.mkdir(workdir, 0o700)
        os.chown(workdir, cfg["uid"], cfg["uid"])
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(src)  # for tracebacks; the program runs from memory
        os.chdir(workdir)
        life_r, life_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(life_w)
            _program(sc, req, src, workdir, (out_w, err_w, st_w), life_r)
        os.close(out_w)
        os.close(err_w)
        del src
        _, st = os.waitpid(pid, 0)
    except BaseException as e:
        _say(st_w, "setup-error %s: %s" % (type(e).__name__, e))
        os._exit(120)
    if os.WIFSIGNALED(st):
        _say(st_w, "signal %d" % os.WTERMSIG(st))
    else:
        _say(st_w, "exit %d" % os.WEXITSTATUS(st))
    os._exit(0)


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    import socket

    cfg = eval(sys.argv[1], {"__builtins__": {}})  # a dict literal the evaluator wrote
    sock = socket.socket(fileno=cfg["sock_fd"])
    try:
        sc = _Sys()
        sc.unshare(NEWNET)
        for name in cfg["preload"]:
            try:
                __import__(name)
            except ImportError:
                pass
    except BaseException as e:
        sock.send(("setup-error %s: %s" % (type(e).__name__, e)).encode())
        os._exit(120)
    sock.send(b"ready")
    while True:
        try:
            header, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        except OSError:
            break
        if not header:
            break  # the evaluator closed its end (or died): nothing left to serve
        _reap()
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            sock.send(b"bad-request")
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            _supervise(sc, cfg, header, fds)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        socket.send_fds(sock, [b"ok"], [pidfd])
        os.close(pidfd)
    os._exit(0)


if __name__ == "__main__":
    main()

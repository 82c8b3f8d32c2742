"""Where Python source comes from: folders (and the archives directly in them), single files, wheels/zips/sdists read in place, CSN jsonl.

`plan_sources` turns the command line's SOURCE arguments into picklable tasks for the worker
pool; `read_task_files` yields each task's (path-in-repo, repo, bytes) without ever extracting an
archive to disk. Every problem becomes a (reason, where) skip rather than an exception.
"""

from __future__ import annotations

import os
import re
import site
import stat
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from fnbody.errors import FnbodyError

ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz")
CSN_SUFFIXES = (".jsonl", ".jsonl.gz")
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", "node_modules", "site-packages", "dist-packages"}
_FILES_PER_TASK = 32


@dataclass
class SourceTask:
    """One unit of work for a worker: a batch of disk files, one archive, or one CSN jsonl file."""

    kind: str  # "files" | "archive" | "csn"
    path: str = ""  # the archive or jsonl file
    repo: str = ""  # the archive's distribution name
    files: list[tuple[str, str, str]] = field(default_factory=list)  # (absolute path, repo, path in repo)


@dataclass
class Plan:
    """Tasks to run plus what was learned while walking (skips found before reading, source descriptions)."""

    tasks: list[SourceTask] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (reason, where)


def is_archive(path: str) -> bool:
    """True for wheel, zip, tar.gz and tgz names."""
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def is_csn(path: str) -> bool:
    """True for CSN jsonl(.gz) names."""
    return path.lower().endswith(CSN_SUFFIXES)


def distribution_name(archive: str) -> str:
    """Distribution name from a wheel/sdist file name: 'requests-2.31.0-py3-none-any.whl' -> 'requests'."""
    name = Path(archive).name
    for suf in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    m = re.match(r"^(.+?)-\d", name)  # name, then '-' and a version starting with a digit
    return m.group(1) if m else name


def default_roots() -> list[tuple[str, str]]:
    """The embedded default: (kind, folder) for the running interpreter's stdlib and its site-packages."""
    roots = [("stdlib", sysconfig.get_paths()["stdlib"])]
    seen = set()
    for sp in site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        rp = os.path.realpath(sp)
        if os.path.isdir(sp) and rp not in seen:
            seen.add(rp)
            roots.append(("site-packages", sp))
    return roots


def site_packages_owners(sp_dir: str) -> dict[str, str]:
    """Map each file (path relative to site-packages, '/'-separated) to the distribution whose RECORD lists it."""
    from importlib import metadata

    owners: dict[str, str] = {}
    for dist in metadata.distributions(path=[sp_dir]):
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        try:
            files = dist.files or []
        except Exception:  # a broken RECORD must not stop the build; the fallback is the top-level package
            continue
        for f in files:
            rel = os.path.normpath(str(f)).replace(os.sep, "/")
            if not rel.startswith(".."):
                owners.setdefault(rel, name)
    return owners


def _walk(root: str, plan: Plan) -> Iterator[tuple[str, str]]:
    """Yield (absolute path, path relative to root) of every .py file, following symlinks without looping."""
    seen: set[tuple[int, int]] = set()

    def onerror(e: OSError) -> None:
        plan.skips.append(("unreadable", f"{e.filename}: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            plan.skips.append(("unreadable", f"{dirpath}: {e.strerror}"))
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            plan.skips.append(("symlink_loop", dirpath))
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith((".dist-info", ".egg-info")))
        for name in sorted(filenames):
            if name.endswith(".py"):
                full = os.path.join(dirpath, name)
                yield full, os.path.relpath(full, root).replace(os.sep, "/")


def _batch(plan: Plan, files: list[tuple[str, str, str]]) -> None:
    for i in range(0, len(files), _FILES_PER_TASK):
        plan.tasks.append(SourceTask(kind="files", files=files[i : i + _FILES_PER_TASK]))


def plan_sources(sources: list[str], max_files: int | None = None) -> Plan:
    """Turn SOURCE arguments (or the default: stdlib + site-packages) into worker tasks."""
    plan = Plan()
    disk: list[tuple[str, str, str]] = []
    archives: set[str] = set()

    def add_archive(path: Path) -> None:  # once each, also when named both alone and through its folder
        key = os.path.realpath(path)
        if key not in archives:
            archives.add(key)
            plan.tasks.append(SourceTask(kind="archive", path=str(path), repo=distribution_name(path.name)))
            plan.sources.append({"kind": "archive", "path": str(path), "repo": distribution_name(path.name)})

    if not sources:
        for kind, root in default_roots():
            owners = site_packages_owners(root) if kind == "site-packages" else {}
            n0 = len(disk)
            for full, rel in _walk(root, plan):
                top = rel.split("/", 1)[0].removesuffix(".py")
                repo = f"stdlib/{top}" if kind == "stdlib" else owners.get(rel, top)
                disk.append((full, repo, rel))
            plan.sources.append({"kind": kind, "path": root, "files": len(disk) - n0})
    for src in sources:
        p = Path(src)
        if p.is_dir():
            n0 = len(disk)
            repo = p.resolve().name or str(p)
            disk.extend((full, repo, rel) for full, rel in _walk(str(p), plan))
            plan.sources.append({"kind": "dir", "path": str(p), "files": len(disk) - n0})
            # Archives directly inside (a `pip download -d DIR` folder) are read as their own distributions; deeper ones
            # (a repo's vendored wheels, test fixtures) are not.
            for entry in sorted(p.iterdir()):
                if entry.is_file() and is_archive(entry.name):
                    add_archive(entry)
        elif not p.exists() and not p.is_symlink():
            raise FnbodyError(f"{src}: source not found (expected a folder, .py file, wheel/zip/tar.gz/tgz, or CSN .jsonl/.jsonl.gz)")
        elif is_archive(src):
            add_archive(p)
        elif is_csn(src):
            plan.tasks.append(SourceTask(kind="csn", path=str(p)))
            plan.sources.append({"kind": "csn", "path": str(p)})
        elif src.endswith(".py"):
            disk.append((str(p), p.parent.resolve().name or p.stem, p.name))
            plan.sources.append({"kind": "file", "path": str(p), "files": 1})
        else:
            raise FnbodyError(f"{src}: unsupported source type (expected a folder, .py file, wheel/zip/tar.gz/tgz, or CSN .jsonl/.jsonl.gz)")
    if max_files is not None:
        disk = disk[:max_files]
    _batch(plan, disk)
    return plan


class SkipFile(Exception):
    """A file that cannot be used: carries the skip reason and where."""

    def __init__(self, reason: str, where: str):
        super().__init__(f"{where}: {reason}")
        self.reason, self.where = reason, where


def read_disk_file(path: str, max_bytes: int) -> bytes:
    """Read one file, refusing ones over `max_bytes`; raises SkipFile."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SkipFile("not_a_file", path)
        if st.st_size > max_bytes:
            raise SkipFile("too_large", path)
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except SkipFile:
        raise
    except OSError as e:
        reason = "symlink_loop" if e.errno == 40 else "unreadable"  # ELOOP
        raise SkipFile(reason, f"{path} ({e.strerror})") from None


def _strip_top(name: str) -> str:
    """Drop an sdist's single top folder ('pkg-1.0/src/x.py' -> 'src/x.py')."""
    parts = name.split("/", 1)
    return parts[1] if len(parts) == 2 and re.search(r"-\d", parts[0]) else name


def iter_archive(path: str, max_bytes: int, max_total_bytes: int) -> Iterator[tuple[str, bytes | SkipFile]]:
    """Yield (member path, bytes or SkipFile) for each .py member, reading the archive in place.

    A member declaring more than `max_bytes` is never decompressed ('archive_member_too_large': zip
    bombs); reads are capped at max_bytes + 1 anyway, since headers can lie. A corrupt or truncated
    archive ends the iteration with a ('', SkipFile('corrupt_archive')) item.
    """
    total = 0
    try:
        if path.lower().endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.endswith(".py"):
                        continue
                    where = f"{path}!{info.filename}"
                    total += info.file_size
                    if info.file_size > max_bytes or total > max_total_bytes:
                        yield info.filename, SkipFile("archive_member_too_large", where)
                        continue
                    with zf.open(info) as f:
                        data = f.read(max_bytes + 1)
                    if len(data) > max_bytes:
                        yield info.filename, SkipFile("archive_member_too_large", where)
                        continue
                    yield info.filename, data
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    total += max(m.size, 0)
                    if total > max_total_bytes:
                        yield "", SkipFile("archive_member_too_large", f"{path} (over {max_total_bytes} bytes uncompressed)")
                        return
                    if not m.isfile() or not m.name.endswith(".py"):
                        continue
                    name = _strip_top(m.name)
                    where = f"{path}!{m.name}"
                    if m.size > max_bytes:
                        yield name, SkipFile("archive_member_too_large", where)
                        continue
                    f = tf.extractfile(m)
                    if f is None:
                        continue
                    yield name, f.read(max_bytes + 1)
    except Exception as e:  # BadZipFile, TarError, EOFError, zlib/lzma errors: an unreadable archive, never a crash
        yield "", SkipFile("corrupt_archive", f"{path} ({type(e).__name__}: {e})")

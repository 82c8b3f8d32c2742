"""Files: atomic writes (temp file, fsync, rename) and jsonl(.gz) reading that names the bad line."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from fnbody.errors import FnbodyError


@functools.cache
def _umask() -> int:
    """The process umask, read once (by setting it and back at once: the only portable way, not thread-safe to repeat)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[io.IOBase]:
    """Open a temporary file beside `path`; on clean exit fsync it and rename it over `path`.

    On an exception (Ctrl-C included) the temporary file is removed, so `path` is either the old
    complete file or the new complete file, never a partial one. `.gz` paths are gzip-compressed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600: give it the mode a plain open() would (the old file's, else 0666 less the umask).
    os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
    os.close(fd)
    binary = "b" in mode
    try:
        with open(tmp, "wb") as raw:
            if path.suffix == ".gz":
                # mtime=0 keeps the bytes reproducible, so content hashes are stable.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                    if binary:
                        yield gz
                    else:
                        with io.TextIOWrapper(gz, encoding=encoding, newline="") as f:
                            yield f
            elif binary:
                yield raw
            else:
                f = io.TextIOWrapper(raw, encoding=encoding, newline="")
                yield f
                f.flush()
                f.detach()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def check_format_version(info: dict, expected: int, where: str | os.PathLike, what: str, hint: str = "") -> dict:
    """`info` when its `format_version` is `expected`; else FnbodyError naming `where`, the `what` format and how to `hint` a fix."""
    if not isinstance(info, dict):
        raise FnbodyError(f"{where}: not a valid {what}: its metadata is a JSON {type(info).__name__}, not an object"
                          f"{'; ' + hint if hint else ''}")
    found = info.get("format_version")
    if found != expected:
        raise FnbodyError(f"{where}: {what} format version {found!r}, this fnbody reads version {expected}{'; ' + hint if hint else ''}")
    return info


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FnbodyError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise FnbodyError(f"{path}: not valid JSON ({e})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as jsonl (gzip when the name ends in .gz), atomically. Returns the row count."""
    n = 0
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return path.open("r", encoding="utf-8")


def iter_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False, stats: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, row)` from a jsonl(.gz) file.

    A line that is not a JSON object raises `FnbodyError` naming the file and line, unless
    `skip_invalid` is set; then it is counted in `stats["invalid_lines"]` and skipped. A file that
    cannot be read (truncated or corrupt gzip, bad UTF-8, no permission) raises `FnbodyError` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise FnbodyError(f"{path}: file not found")
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    if skip_invalid:
                        if stats is not None:
                            stats["invalid_lines"] = stats.get("invalid_lines", 0) + 1
                        continue
                    raise FnbodyError(f"{path}:{lineno}: malformed jsonl line ({e})") from None
                yield lineno, row
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _read_error(path, lineno, e) from None


def _read_error(path: Path, lines_read: int, e: BaseException) -> FnbodyError:
    """The error for a file that stopped being readable after `lines_read` good lines."""
    after = f" after line {lines_read}" if lines_read else ""
    damaged = isinstance(e, (EOFError, UnicodeDecodeError, zlib.error, gzip.BadGzipFile))
    kind = "zlib.error" if isinstance(e, zlib.error) else type(e).__name__
    return FnbodyError(f"{path}: cannot read{after} ({kind}: {e}){'; the file is corrupt or truncated' if damaged else ''}")


def read_jsonl(path: str | os.PathLike, **kwargs) -> list[dict]:
    """Read a whole jsonl(.gz) file into a list of rows (see `iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, **kwargs)]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_output_file(path: str | Path, flag: str, inputs: dict[str, str | Path | None] | None = None) -> Path:
    """`path` when a file can be written there; else FnbodyError naming `flag`. Checked before any work.

    Refused: a folder; a path whose nearest existing folder cannot be written (the missing folders are not made
    here); and a path that is (resolves to) the same file as one of `inputs` ({flag: path}), which writing would destroy.
    """
    path = Path(path)
    target = path.resolve()
    for in_flag, src in (inputs or {}).items():
        if src is not None and Path(src).is_file() and Path(src).resolve() == target:
            raise FnbodyError(f"{flag} {path}: is the same file as {in_flag} {src}; writing it would destroy the input "
                              "(choose another output file)")
    if path.is_dir():
        raise FnbodyError(f"{flag} {path}: is a folder; give a file path")
    if path.exists() and not path.is_file():
        raise FnbodyError(f"{flag} {path}: exists and is not a regular file")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise FnbodyError(f"{flag} {path}: cannot write there ({folder} is not a folder)")
    try:  # a real write, not os.access: root passes access checks on folders such as /proc that refuse files
        fd, probe = tempfile.mkstemp(prefix=".fnbody-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FnbodyError(f"{flag} {path}: cannot write a file in {folder} ({e.strerror or e})") from None
    return path


def os_reason(e: OSError) -> str:
    """An OSError in words for a user: `strerror: filename` (`Permission denied: /data/x`)."""
    if e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return e.strerror or str(e)


def fresh_dir_beside(path: str | os.PathLike, tag: str) -> Path:
    """Create and return a new empty folder beside `path`, named `.NAME.TAG-RANDOM`; never an existing one.

    Unlike `tempfile.mkdtemp` it keeps the umask's permissions, so a folder later renamed into
    place is as readable as one made by `mkdir`.
    """
    path = Path(path)
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path.parent}: no free name for a temporary folder beside {path.name}")


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written `tmp_dir` into place as `final_dir`, replacing any old one.

    The old directory is first renamed aside to a fresh hidden name (never a name a user could
    own, such as `final_dir.old`), then the new one appears by one rename, then the old one is
    removed. If the second rename fails, the old directory is put back.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not final_dir.exists():
        os.replace(tmp_dir, final_dir)
        return
    old = fresh_dir_beside(final_dir, "old")
    try:
        os.replace(final_dir, old)  # a directory may replace an empty directory
    except BaseException:
        old.rmdir()
        raise
    try:
        os.replace(tmp_dir, final_dir)
    except BaseException:
        os.replace(old, final_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)

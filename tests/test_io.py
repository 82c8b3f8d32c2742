"""Atomic writes and jsonl reading that names the bad line."""

import gzip
import json

import pytest

from fnbody.errors import FnbodyError
from fnbody.io import atomic_open, atomic_write_text, check_format_version, iter_jsonl, read_jsonl, replace_dir, write_jsonl


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_jsonl_gz_round_trip_is_reproducible(tmp_path):
    rows = [{"a": 1, "s": "é"}, {"b": [1, 2]}]
    write_jsonl(tmp_path / "x.jsonl.gz", rows)
    first = (tmp_path / "x.jsonl.gz").read_bytes()
    write_jsonl(tmp_path / "x.jsonl.gz", rows)
    assert (tmp_path / "x.jsonl.gz").read_bytes() == first  # mtime-free gzip: stable content hashes
    assert read_jsonl(tmp_path / "x.jsonl.gz") == rows


def test_bad_lines_are_named_or_counted(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"ok": 1}\n[1, 2]\n\n{"ok": 2}\n{broken\n')
    with pytest.raises(FnbodyError, match=r"s.jsonl:2: malformed"):
        read_jsonl(p)
    stats = {}
    assert [n for n, _ in iter_jsonl(p, skip_invalid=True, stats=stats)] == [1, 4]
    assert stats["invalid_lines"] == 2
    trunc = tmp_path / "t.jsonl.gz"
    trunc.write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:-20])
    with pytest.raises(FnbodyError, match="cannot read"):
        read_jsonl(trunc)


def test_corrupt_gzip_is_named_not_a_traceback(tmp_path):
    rows = "".join(json.dumps({"i": i, "text": f"line {i} " + "abc" * (i % 7)}) + "\n" for i in range(300))
    data = bytearray(gzip.compress(rows.encode(), mtime=0))
    mid = len(data) // 2
    data[mid : mid + 16] = b"\xff" * 16  # deflate data broken in the middle: zlib.error, not EOFError
    bad = tmp_path / "s.jsonl.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(FnbodyError, match=r"s\.jsonl\.gz: cannot read.*zlib\.error.*corrupt or truncated"):
        read_jsonl(bad)


def _tree(root, text):
    root.mkdir()
    (root / "f.txt").write_text(text)


def test_replace_dir_never_touches_fixed_name_siblings(tmp_path):
    final = tmp_path / "out"
    _tree(final, "old")
    for sibling in ("out.old", "out.tmp", ".out.old"):  # a user's folders that share the names a tool might pick
        _tree(tmp_path / sibling, "mine")
    _tree(tmp_path / "new", "new")
    replace_dir(tmp_path / "new", final)
    assert (final / "f.txt").read_text() == "new"
    assert all((tmp_path / s / "f.txt").read_text() == "mine" for s in ("out.old", "out.tmp", ".out.old"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out", "out.old", "out.tmp"]  # no leftover
    _tree(tmp_path / "first", "first")
    replace_dir(tmp_path / "first", tmp_path / "fresh")  # nothing to replace
    assert (tmp_path / "fresh" / "f.txt").read_text() == "first"


def test_replace_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path):
    final = tmp_path / "out"
    _tree(final, "old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", final)
    assert (final / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_metadata_that_is_not_an_object_is_named(tmp_path):
    with pytest.raises(FnbodyError, match=r"run: not a valid checkpoint: its metadata is a JSON list"):
        check_format_version([1], 1, "run", "checkpoint")


def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    import os
    import stat

    from fnbody.io import atomic_write_text

    new = tmp_path / "new.txt"
    atomic_write_text(new, "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600
    old = tmp_path / "old.txt"
    old.write_text("a")
    old.chmod(0o640)
    atomic_write_text(old, "b")
    assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text() == "b"

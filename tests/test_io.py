"""Atomic writes and jsonl reading that names the bad line."""

import gzip

import pytest

from fnbody.errors import FnbodyError
from fnbody.io import atomic_open, atomic_write_text, iter_jsonl, read_jsonl, write_jsonl


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

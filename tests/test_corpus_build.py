"""The corpus builder end to end on self-made sources: trees, a wheel, an sdist, bad input, real CSN rows."""

import gzip
import io
import json
import os
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from fnbody.cli import main as cli_main
from fnbody.corpus.build import BuildConfig, build_corpus
from fnbody.corpus.io import CSN_FIELDS, RECORD_FIELDS, SPLITS, check_corpus, read_split
from fnbody.corpus.stats import corpus_stats, format_stats
from fnbody.errors import FnbodyError

from corpus_helpers import module

CSN_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "csn-python-sample"

GOOD = textwrap.dedent('''\
    class Store:
        """A store."""

        def fetch(self, key, default=None):
            """Fetch the value stored under key.

            Returns default when missing."""
            value = self._data.get(key)
            if value is None:
                return default
            return value

        def __repr__(self):
            """Representation of the store object."""
            return "Store(%d)" % len(self._data)

        def abstract(self):
            """Subclasses must implement this one."""
            raise NotImplementedError

    def test_fetch():
        """Test that fetch works fine."""
        assert Store().fetch(1) is None
        assert True

    def short():
        """Hi."""
        x = 1
        return x
    ''')


def cfg(**kw) -> BuildConfig:
    return BuildConfig(jobs=kw.pop("jobs", 1), **kw)


def all_records(out) -> list[dict]:
    return [r for s in SPLITS for r in read_split(out, s)]


def test_tree_build_filters_fields_and_manifest(tmp_path):
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "store.py").write_text(GOOD)
    (src / "pkg" / "util.py").write_text(module("util", 5))
    (src / "tests").mkdir()
    (src / "tests" / "test_x.py").write_text(module("tx", 3))
    m = build_corpus([str(src)], tmp_path / "out", cfg())
    recs = all_records(tmp_path / "out")
    assert {r["func_name"] for r in recs} == {"Store.fetch"} | {f"util_f{i}" for i in range(5)}
    for r in recs:
        assert list(r) == list(RECORD_FIELDS)
        assert r["prompt"] + r["body"] == r["code"] == r["original_string"]
        assert r["repo"] == "proj" and r["language"] == "python" and r["partition"] in SPLITS
    fetch = next(r for r in recs if r["func_name"] == "Store.fetch")
    assert fetch["signature"] == "def fetch(self, key, default=None):" and fetch["lineno"] == 4
    assert fetch["path"] == "pkg/store.py" and fetch["docstring_tokens"] == ["Fetch", "the", "value", "stored", "under", "key", "."]
    assert '"""' not in " ".join(fetch["code_tokens"]) and fetch["code_tokens"][:2] == ["def", "fetch"]
    c = m["counts"]
    assert c["functions"]["filtered"] == {"dunder": 1, "stub_body": 1, "test_function": 1, "short_docstring": 1}
    assert c["files"]["filtered_test_path"] == 1 and c["functions"]["final"] == 6
    assert check_corpus(tmp_path / "out")["format_version"] == 1 and m["content_hash"].startswith("sha256:")
    assert m["config"]["filters"]["min_code_lines"] == 3 and m["version"]


def test_filters_switch_off_and_duplicates_removed(tmp_path):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "a.py").write_text(GOOD)
    (src / "b.py").write_text(GOOD.replace("# x", ""))  # exact copy: every function is an exact duplicate
    (src / "c.py").write_text(GOOD.replace("return value\n", "return value  # same tokens\n").replace("key, default", "key, dflt").replace("default\n", "dflt\n"))
    m = build_corpus([str(src)], tmp_path / "out", cfg(
        filters=__import__("fnbody.corpus.filters", fromlist=["FilterConfig"]).FilterConfig(
            drop_tests=False, drop_dunder=False, drop_stubs=False, min_code_lines=0, min_docstring_tokens=0)))
    f = m["counts"]["functions"]
    assert f["extracted"] == 15 and f["filtered"] == {} and f["exact_duplicates"] == 5 + 4
    assert f["near_duplicates"] == 1  # fetch with a renamed parameter: Jaccard >= 0.8
    assert f["final"] == 5


def make_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("demo/__init__.py", module("demo", 3))
        zf.writestr("demo/core.py", GOOD)
        zf.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")


def test_wheel_and_sdist_read_in_place(tmp_path):
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    make_wheel(whl)
    sdist = tmp_path / "other_pkg-2.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        data = module("other", 2).encode()
        info = tarfile.TarInfo("other_pkg-2.3/src/other.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    before = set(os.listdir(tmp_path))
    m = build_corpus([str(whl), str(sdist)], tmp_path / "out", cfg())
    assert set(os.listdir(tmp_path)) - before == {"out"}  # nothing extracted beside the archives
    recs = all_records(tmp_path / "out")
    assert {r["repo"] for r in recs} == {"demo", "other_pkg"}
    assert {r["path"] for r in recs} == {"demo/__init__.py", "demo/core.py", "src/other.py"}
    assert m["counts"]["functions"]["final"] == 3 + 1 + 2
    # A folder of downloaded archives (`pip download -d`): those at its top level are read as their distributions.
    (tmp_path / "dl" / "deep").mkdir(parents=True)
    for f in (whl, sdist):
        (tmp_path / "dl" / f.name).write_bytes(f.read_bytes())
    make_wheel(tmp_path / "dl" / "deep" / "vendored-9.0-py3-none-any.whl")  # not at the top: not read
    m2 = build_corpus([str(tmp_path / "dl")], tmp_path / "out2", cfg())
    assert {r["repo"] for r in all_records(tmp_path / "out2")} == {"demo", "other_pkg"} and m2["counts"]["functions"]["final"] == 6
    m3 = build_corpus([str(tmp_path / "dl"), str(tmp_path / "dl" / whl.name)], tmp_path / "out3", cfg())  # named twice: read once
    assert m3["counts"]["files"]["archives_and_jsonl"] == 2 and m3["counts"]["functions"]["extracted"] == m2["counts"]["functions"]["extracted"]


def bad_sources(tmp_path: Path) -> Path:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "ok.py").write_text(module("ok", 2))
    (src / "syntax.py").write_text("def f(:\n    pass\n")
    (src / "latin.py").write_bytes(b"def f():\n    '''caf\xe9 ol\xe9 ol\xe9'''\n    return 1\n")
    (src / "nul.py").write_bytes(b"def f():\n    return 1\x00\n")
    (src / "bom.py").write_bytes(b"\xef\xbb\xbf" + module("bom", 1).encode())
    (src / "big.py").write_text("x = 1\n" * 200_000)
    (src / "loop").symlink_to(src)  # a symlink loop
    (src / "dangling.py").symlink_to(src / "missing.py")
    with zipfile.ZipFile(src / "bomb-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/huge.py", b"#" * (3 << 20))  # 3 MiB of '#' compresses to a few KiB
    (src / "trunc-1.0.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (src / "rows.jsonl").write_text('{"repo": 1}\nnot json\n')
    return src


def test_bad_input_is_skipped_and_counted(tmp_path):
    src = bad_sources(tmp_path)
    archives = [str(src / "bomb-1.0-py3-none-any.whl"), str(src / "trunc-1.0.tar.gz"), str(src / "rows.jsonl")]
    m = build_corpus([str(src), *archives], tmp_path / "out", cfg(max_file_mb=1))
    s = m["counts"]["skipped"]
    assert s["syntax_error"] == 1 and s["not_utf8"] == 1 and s["nul_bytes"] == 1 and s["too_large"] == 1
    assert s["symlink_loop"] == 1 and s["unreadable"] == 1
    assert s["archive_member_too_large"] == 1 and s["corrupt_archive"] == 1 and s["malformed_csn_line"] == 2
    assert m["counts"]["files"]["bom"] == 1
    assert {r["func_name"] for r in all_records(tmp_path / "out")} == {"ok_f0", "ok_f1", "bom_f0"}
    assert any("syntax.py" in w for w in m["counts"]["skipped_examples"]["syntax_error"])


def test_strict_fails_naming_file_and_line(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "syntax.py").write_text("def f(:\n")
    with pytest.raises(FnbodyError, match=r"syntax\.py.*syntax error"):
        build_corpus([str(src)], tmp_path / "out", cfg(strict=True))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(["{}"] * 2 + ["{bad"]) + "\n")
    with pytest.raises(FnbodyError, match=r"rows\.jsonl:1: malformed csn line"):
        build_corpus([str(rows)], tmp_path / "out", cfg(strict=True))
    assert not (tmp_path / "out").exists()  # nothing half-written is left


def test_refuses_to_overwrite_a_non_corpus_folder(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(module("a", 1))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FnbodyError, match="refusing to overwrite"):
        build_corpus([str(tmp_path / "src")], tmp_path / "precious", cfg())
    assert (tmp_path / "precious" / "notes.txt").exists()


def test_split_by_repo_deterministic_across_jobs(tmp_path):
    for i in range(12):
        d = tmp_path / "src" / f"repo{i}"
        d.mkdir(parents=True)
        (d / "m.py").write_text(module(f"r{i}", 2))
    srcs = [str(tmp_path / "src" / f"repo{i}") for i in range(12)]
    m1 = build_corpus(srcs, tmp_path / "o1", cfg(jobs=1, shard_size=5))
    m2 = build_corpus(srcs, tmp_path / "o2", cfg(jobs=2, shard_size=5))
    assert m1["content_hash"] == m2["content_hash"] and m1["files"] == m2["files"]
    seen = {}
    for s in SPLITS:
        for r in read_split(tmp_path / "o1", s):
            assert seen.setdefault(r["repo"], s) == s  # no repo spans two splits
    assert len(set(seen.values())) >= 2 and len(m1["files"]) >= 4
    m3 = build_corpus(srcs, tmp_path / "o3", cfg(seed=7, shard_size=5))
    assert m3["content_hash"] != m1["content_hash"]


def _repos_by_split(n: int) -> dict[str, list[int]]:
    from fnbody.corpus.split import split_of

    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i in range(n):
        out[split_of(f"repo_{i}", 0)].append(i)
    return out


def test_extend_adds_to_train_only_and_keeps_eval_byte_for_byte(tmp_path, capsys):
    by = _repos_by_split(20)
    assert by["train"] and by["valid"] and by["test"]
    srcs = []
    for i in range(20):
        d = tmp_path / "src" / f"repo_{i}"
        d.mkdir(parents=True)
        (d / "m.py").write_text(module(f"r{i}", 3))
        srcs.append(str(d))
    base = tmp_path / "base"
    bm = build_corpus(srcs, base, cfg(shard_size=4))
    test_fn = module(f"r{by['test'][0]}", 1)  # the test repo's first function, copied into a new package
    new = tmp_path / "new"
    (new / "fresh").mkdir(parents=True)
    (new / "fresh" / "a.py").write_text(module("fresh", 4))
    (new / "vendors").mkdir()
    (new / "vendors" / "copied.py").write_text(test_fn)  # exact copy of a test function: must not leak into train
    (new / "vendors" / "near.py").write_text(test_fn.replace("return sum(d)", "e = 0\n    return sum(d) + e"))  # near copy
    eval_alias = f"Repo.{by['valid'][0]}"  # the same project as 'repo_N' by PEP 503
    (new / eval_alias).mkdir()
    (new / eval_alias / "b.py").write_text(module("newer", 2))  # a newer release of a valid repo: dropped
    out = tmp_path / "ext"
    assert cli_main(["corpus", "build", str(new / "fresh"), str(new / "vendors"), str(new / eval_alias),
                     "--out", str(out), "--extend", str(base), "--shard-size", "4", "-j", "1"]) == 0
    assert "its valid and test are unchanged" in capsys.readouterr().err
    m = check_corpus(out)
    for split in ("valid", "test"):
        for f in (base / split).glob("*.jsonl.gz"):
            assert (out / split / f.name).read_bytes() == f.read_bytes()
        assert sorted(p.name for p in (out / split).glob("*")) == sorted(p.name for p in (base / split).glob("*"))
        assert m["counts"]["splits"][split] == bm["counts"]["splits"][split]
    base_train = list(read_split(base, "train"))
    train = list(read_split(out, "train"))
    assert train[: len(base_train)] == base_train  # the base's train comes first, unchanged
    added = train[len(base_train):]
    assert {r["repo"] for r in added} == {"fresh"} and len(added) == 4
    assert all(r["partition"] == "train" for r in added)
    fn = m["counts"]["functions"]
    assert fn["eval_repo_dropped"] == 2 and fn["exact_duplicates"] == 1 and fn["near_duplicates"] == 1 and fn["final"] == 4
    assert m["counts"]["splits"]["train"]["records"] == len(train) == bm["counts"]["splits"]["train"]["records"] + 4
    assert m["extends"]["content_hash"] == bm["content_hash"] and m["extends"]["added"] == {"train": 4, "repos": 1}
    assert m["files"][f"train/python_train_{len(list((base / 'train').glob('*.gz')))}.jsonl.gz"]["records"] == 4
    st = corpus_stats(out)
    assert st["extends"]["added_train"] == 4 and st["extends"]["base_content_hash"] == bm["content_hash"]
    assert "train +4 records from 1 repos" in format_stats(st) and "extends" not in corpus_stats(base)


def test_extend_refuses_bad_requests(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(module("a", 2))
    base = tmp_path / "base"
    build_corpus([str(tmp_path / "src")], base, cfg())
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    with pytest.raises(FnbodyError, match="cannot also be --out"):
        build_corpus([str(tmp_path / "src")], base, cfg(extend=str(base)))
    with pytest.raises(FnbodyError, match="needs SOURCE"):
        build_corpus([], tmp_path / "o", cfg(extend=str(base)))
    with pytest.raises(FnbodyError, match="not an fnbody corpus"):
        build_corpus([str(tmp_path / "src")], tmp_path / "o", cfg(extend=str(tmp_path / "src")))
    with pytest.raises(FnbodyError, match="keep-csn-partition"):
        build_corpus([str(tmp_path / "src")], tmp_path / "o", cfg(extend=str(base), keep_csn_partition=True))
    assert {p: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before and not (tmp_path / "o").exists()


@pytest.mark.skipif(not CSN_SAMPLE.is_dir(), reason=f"CSN sample rows not found at {CSN_SAMPLE} (shared/ folder beside the repo)")
def test_csn_rows_round_trip(tmp_path):
    files = sorted(CSN_SAMPLE.glob("*.jsonl.gz"))
    originals = {}
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                originals[(row["repo"], row["path"], row["func_name"], row["code"])] = row
    assert len(originals) >= 200
    no_filters = __import__("fnbody.corpus.filters", fromlist=["FilterConfig"]).FilterConfig(
        drop_tests=False, drop_dunder=False, drop_stubs=False, min_code_lines=0, min_docstring_tokens=0)
    m = build_corpus([str(f) for f in files], tmp_path / "out", cfg(filters=no_filters, exact_dedup=False, near_dedup=False, keep_csn_partition=True))
    recs = all_records(tmp_path / "out")
    assert len(recs) + sum(m["counts"]["skipped"].values()) == len(originals)
    assert len(recs) == len(originals)  # every sample row parses
    for r in recs:
        o = originals[(r["repo"], r["path"], r["func_name"], r["code"])]
        assert {k: r[k] for k in CSN_FIELDS} == {k: o[k] for k in CSN_FIELDS}
        assert r["prompt"] + r["body"] == r["code"] and r["signature"].startswith(("def ", "async def ", "@"))
        assert r["lineno"] is not None and f"#L{r['lineno']}-" in o["url"]
    # With the default filters and dedup, CSN input is filtered again (some rows go).
    m2 = build_corpus([str(f) for f in files], tmp_path / "out2", cfg())
    assert 0 < m2["counts"]["functions"]["final"] < len(originals)


def test_stats_and_cli(tmp_path, capsys):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "m.py").write_text(module("m", 6) + GOOD)
    assert cli_main(["corpus", "build", str(src), "--out", str(tmp_path / "out"), "-j", "1", "--max-samples", "5"]) == 0
    st = corpus_stats(tmp_path / "out", plots_dir=tmp_path / "plots")
    assert st["records"] == 5 and sum(s["records"] for s in st["splits"].values()) == 5
    assert st["code_tokens"]["median"] > 20 and st["docstring_tokens"]["median"] >= 3
    assert st["top_repos"] == [["proj", 5]]
    png = Path(st["plots"][0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert cli_main(["corpus", "stats", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 5
    assert cli_main(["corpus", "stats", str(tmp_path / "nope")]) == 2
    assert cli_main(["corpus", "build", str(tmp_path / "missing.py"), "--out", str(tmp_path / "o")]) == 2


def small_corpus(tmp_path: Path, shard_size: int = 4) -> Path:
    """12 functions of one repo, all in train, in shards of `shard_size` (valid and test: one empty shard each)."""
    src = tmp_path / "src" / "proj"
    src.mkdir(parents=True)
    (src / "m.py").write_text(module("m", 12))
    out = tmp_path / "corpus"
    build_corpus([str(src)], out, cfg(fractions=(1.0, 0.0, 0.0), shard_size=shard_size))
    return out


def rewrite_shard(shard: Path, rows: list) -> None:
    """Replace a shard's rows and record its new size in the manifest, as if the builder had written it."""
    from fnbody.io import read_json, write_json, write_jsonl

    write_jsonl(shard, rows)
    manifest_path = shard.parents[1] / "manifest.json"
    m = read_json(manifest_path)
    m["files"][f"{shard.parent.name}/{shard.name}"]["bytes"] = shard.stat().st_size
    write_json(manifest_path, m)


def test_rebuild_keeps_a_users_old_folder(tmp_path):
    out = small_corpus(tmp_path)
    (tmp_path / "corpus.old").mkdir()
    (tmp_path / "corpus.old" / "notes.txt").write_text("mine")
    build_corpus([str(tmp_path / "src" / "proj")], out, cfg(shard_size=100))
    assert (tmp_path / "corpus.old" / "notes.txt").read_text() == "mine"
    assert len(read_split(out, "train")) + len(read_split(out, "valid")) + len(read_split(out, "test")) == 12
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_missing_extra_or_resized_shard_is_an_error(tmp_path, capsys):
    out = small_corpus(tmp_path)
    assert len(read_split(out, "train")) == 12
    third = out / "train" / "python_train_2.jsonl.gz"
    data = third.read_bytes()
    third.unlink()
    with pytest.raises(FnbodyError, match=r"python_train_2\.jsonl\.gz: shard listed in manifest\.json is missing"):
        read_split(out, "train")
    assert cli_main(["corpus", "stats", str(out)]) == 2
    assert "python_train_2.jsonl.gz: shard listed in manifest.json is missing" in capsys.readouterr().err
    third.write_bytes(data)
    (out / "train" / "python_train_3.jsonl.gz").write_bytes(data)
    with pytest.raises(FnbodyError, match=r"python_train_3\.jsonl\.gz: shard not listed in"):
        corpus_stats(out)
    with pytest.raises(FnbodyError, match=r"python_train_3\.jsonl\.gz: shard not listed in"):
        build_corpus([str(tmp_path / "src" / "proj")], tmp_path / "ext", cfg(extend=str(out)))
    (out / "train" / "python_train_3.jsonl.gz").unlink()
    third.write_bytes(data[:-5])
    with pytest.raises(FnbodyError, match=r"python_train_2\.jsonl\.gz: \d+ bytes, but manifest\.json records \d+"):
        read_split(out, "train")
    # A manifest from before the "files" list: nothing to check against, so it is read as it is.
    third.write_bytes(data)
    m = json.loads((out / "manifest.json").read_text())
    del m["files"]
    (out / "manifest.json").write_text(json.dumps(m))
    third.unlink()
    assert len(read_split(out, "train")) == 8


def test_manifest_that_is_not_an_object_is_named(tmp_path):
    out = small_corpus(tmp_path)
    (out / "manifest.json").write_text("[1, 2]\n")
    with pytest.raises(FnbodyError, match=r"manifest\.json: not a corpus manifest \(a JSON list"):
        read_split(out, "train")
    (out / "manifest.json").write_text('{"format_version": 1, "files": [1]}\n')
    with pytest.raises(FnbodyError, match=r"manifest\.json: its \"files\" entry is not an object"):
        corpus_stats(out)


@pytest.mark.parametrize("setting, message", [
    ({"shard_size": 0}, r"--shard-size 0: must be >= 1"),
    ({"shard_size": -1}, r"--shard-size -1: must be >= 1"),
    ({"max_samples": -1}, r"--max-samples -1: must be >= 0"),
    ({"max_files": -1}, r"--max-files -1: must be >= 0"),
    ({"fractions": (float("nan"), 0.5, 0.5)}, r"--split nan,0.5,0.5: shares must be finite"),
    ({"fractions": (float("inf"), 0.5, 0.5)}, r"--split inf,0.5,0.5: shares must be finite"),
    ({"fractions": (0.5, 0.6, -0.1)}, r"must be finite, non-negative and sum to 1"),
])
def test_bad_build_settings_are_rejected_before_writing(tmp_path, setting, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(module("a", 3))
    with pytest.raises(FnbodyError, match=message):
        build_corpus([str(tmp_path / "src")], tmp_path / "out", cfg(**setting))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_build_flags_exit_cleanly(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(module("a", 3))
    for flags, message in ((["--shard-size", "0"], "--shard-size 0: must be >= 1"), (["--split", "nan,0.5,0.5"], "must be finite"),
                           (["--max-samples", "-1"], "--max-samples -1: must be >= 0")):
        assert cli_main(["corpus", "build", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "-j", "1", *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_negative_max_samples_when_reading_a_split(tmp_path):
    out = small_corpus(tmp_path)
    with pytest.raises(FnbodyError, match=r"--max-samples -5: must be >= 0"):
        read_split(out, "train", -5)
    assert len(read_split(out, "train", 0)) == 0 and len(read_split(out, "train", 5)) == 5


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("code_tokens"), r"'code_tokens' is missing, expected a list of strings"),
    (lambda r: r.update(docstring_tokens=5), r"'docstring_tokens' is a JSON number, expected a list of strings"),
    (lambda r: r.update(code_tokens=["def", 1]), r"'code_tokens' is a list with a non-string item"),
    (lambda r: r.update(repo=None), r"'repo' is a JSON null, expected a string"),
    (lambda r: r.update(body=["x"]), r"'body' is a JSON list, expected a string"),
    (lambda r: r.pop("func_name"), r"'func_name' is missing"),
    (lambda r: r.update(lineno="7"), r"'lineno' is a JSON string, expected an integer or null"),
])
def test_records_with_missing_or_wrong_typed_fields_are_named(tmp_path, capsys, change, message):
    out = small_corpus(tmp_path)
    shard = out / "train" / "python_train_1.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(shard, "rt", encoding="utf-8")]
    change(rows[2])
    rewrite_shard(shard, rows)
    with pytest.raises(FnbodyError, match=r"python_train_1\.jsonl\.gz:3: corpus record field " + message):
        read_split(out, "train")
    assert cli_main(["corpus", "stats", str(out)]) == 2
    assert "python_train_1.jsonl.gz:3: corpus record field" in capsys.readouterr().err


def test_unwritable_out_and_plots_paths_are_named(tmp_path, capsys):
    out = small_corpus(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(FnbodyError, match=r"--out .*afile/c: cannot write the corpus there \(File exists: .*afile\)"):
        build_corpus([str(tmp_path / "src")], afile / "c", cfg())
    assert cli_main(["corpus", "stats", str(out), "--plots", str(afile)]) == 2
    assert f"--plots {afile}: exists and is not a folder" in capsys.readouterr().err
    with pytest.raises(FnbodyError, match=r"--plots .*afile/sub: cannot write token_lengths\.png \(Not a directory: .*afile/sub\)"):
        corpus_stats(out, plots_dir=afile / "sub")
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corpus", "src"]


def test_sources_without_functions_are_an_error_not_an_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.py").write_text("x = 1\n")
    assert cli_main(["corpus", "build", str(empty), "--out", str(tmp_path / "c"), "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert "no function with a docstring passed the filters" in err and "nothing written" in err
    assert not (tmp_path / "c").exists()


def test_a_bad_out_fails_before_any_source_is_read(tmp_path, monkeypatch):
    import fnbody.corpus.build as build

    def no_extraction(*a, **k):
        raise AssertionError("sources were read before --out was checked")

    monkeypatch.setattr(build, "plan_sources", no_extraction)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FnbodyError, match="not an fnbody corpus"):
        build_corpus([str(tmp_path)], tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x" and not list(tmp_path.glob(".afile.tmp-*"))

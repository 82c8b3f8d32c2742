"""HumanEval correctness bars and the `fnbody eval` commands, including bad input."""

import gzip
import json

import pytest

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.evaluate.humaneval import evaluate_functional_correctness
from fnbody.evaluate.samples import load_problems, load_samples, reference_task_id


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_canonical_solutions_all_pass(problems):
    assert len(problems) == 164
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    summary, per = evaluate_functional_correctness(samples, problems, ks=(1,), workers=4)
    assert summary["pass@1"] == 1.0, [r for r in per if not r["passed"]]
    assert summary["statuses"] == {"passed": 164}
    assert summary["signature"].startswith("pass@k|n:1|tasks:164|")


def test_empty_completions_score_zero_and_runs_repeat(problems):
    sub = {t: problems[t] for t in list(problems)[:24]}
    samples = [{"task_id": t, "completion": c} for t in sub for c in ("", sub[t]["canonical_solution"], "    return None\n")]
    s1, r1 = evaluate_functional_correctness(samples, sub, ks=(1, 3, 10), workers=4)
    s2, r2 = evaluate_functional_correctness(samples, sub, ks=(1, 3, 10), workers=4)
    key = lambda rows: [(r["task_id"], r["passed"], r["status"], r["reason"]) for r in rows]
    assert key(r1) == key(r2)
    assert s1["pass@1"] == pytest.approx(1 / 3) and s1["pass@3"] == 1.0 and s1["ks_skipped"] == [10]
    assert all(not r["passed"] for r in r1[0::3])
    empty, _ = evaluate_functional_correctness([{"task_id": t, "completion": ""} for t in sub], sub, ks=(1,), workers=4)
    assert empty["pass@1"] == 0.0


def test_humaneval_command_writes_results_and_json(tmp_path, capsys):
    pfile = tmp_path / "p.jsonl.gz"
    probs = [{"task_id": "t/0", "prompt": "def inc(x):\n", "test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"},
             {"task_id": "t/1", "prompt": "def neg(x):\n", "test": "def check(f):\n    assert f(1) == -1\n", "entry_point": "neg"}]
    with gzip.open(pfile, "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in probs)
    samples = _write(tmp_path / "s.jsonl", [{"task_id": "t/0", "completion": "    return x + 1\n"}, {"task_id": "t/1", "completion": "    return x\n"}])
    assert main(["eval", "humaneval", str(samples), "--problems", str(pfile), "-k", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pass@1"] == 0.5 and summary["tasks"] == 2
    rows = [json.loads(x) for x in (tmp_path / "s_humaneval_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"], r["status"]) for r in rows] == [("t/0", True, "passed"), ("t/1", False, "failed")]


@pytest.mark.parametrize("rows, message", [
    (['{"task_id": "HumanEval/0", "completion": ""}', "{not json"], ":2: malformed jsonl line"),
    ([{"task_id": "HumanEval/0"}], ":1: sample for 'HumanEval/0' has no string 'completion'"),
    ([{"completion": "x"}], ":1: sample has no string 'task_id'"),
    ([{"task_id": "Nope/1", "completion": ""}], ":1: unknown task_id 'Nope/1'"),
    ([{"task_id": "HumanEval/0", "completion": "", "completion_id": 0}] * 2, ":2: duplicate sample"),
])
def test_bad_samples_name_the_line(tmp_path, problems, rows, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(FnbodyError, match="bad.jsonl" + message):
        load_samples(path, set(problems))


def test_skip_invalid_counts_and_missing_tasks_error(tmp_path, problems, capsys):
    path = _write(tmp_path / "s.jsonl", ["{oops", {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
                                         {"task_id": "Nope/1", "completion": ""}])
    # Without --skip-invalid: an error naming the line; never a silent 0.
    assert main(["eval", "humaneval", str(path)]) == 2
    assert "s.jsonl:1" in capsys.readouterr().err
    loaded = load_samples(path, set(problems), skip_invalid=True)
    assert loaded.skipped == {"malformed_json": 1, "unknown_task_id": 1} and len(loaded.rows) == 1
    with pytest.raises(FnbodyError, match="163 problem"):
        evaluate_functional_correctness(loaded.rows, problems, ks=(1,))
    assert main(["eval", "humaneval", str(path), "--skip-invalid", "--json", "-k", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pass@1"] == 1.0 and summary["tasks"] == 1 and summary["tasks_without_samples"] == 163
    assert summary["skipped_lines"] == {"malformed_json": 1, "unknown_task_id": 1}


def test_problems_with_wrong_schema(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"task_id": "a", "prompt": "def f():\n", "test": "", "entry_point": "f"}, {"task_id": "b", "prompt": "x"}])
    with pytest.raises(FnbodyError, match=r"p.jsonl:2: problem lacks string field 'test'"):
        load_problems(path)


def test_bleu_syntax_novelty_commands_on_a_corpus(tmp_path, capsys):
    from conftest import make_tiny_corpus
    from fnbody.corpus.io import read_split

    corpus = make_tiny_corpus(tmp_path / "corpus")
    test = read_split(corpus, "test")
    samples = [{"task_id": reference_task_id(r), "completion": r["body"] if i % 2 == 0 else "    pass\n", "prompt": r["prompt"]}
               for i, r in enumerate(test)]
    sfile = _write(tmp_path / "gen.jsonl", samples)
    assert main(["eval", "bleu", str(sfile), "--references", str(corpus), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    half = 100.0 * sum(1 for i in range(len(test)) if i % 2 == 0) / len(test)
    assert summary["metrics"]["exact-match"]["score"] == pytest.approx(half)
    assert 0 < summary["metrics"]["bleu"]["score"] < 100 and summary["samples"] == len(test)
    per = (tmp_path / "gen_bleu_results.jsonl").read_text().splitlines()
    assert len(per) == len(test)

    assert main(["eval", "syntax", str(sfile)]) == 0
    assert "syntax_valid_rate: 1.0000" in capsys.readouterr().out

    assert main(["eval", "novelty", str(sfile), "--corpus", str(corpus), "--n", "4-6", "--json"]) == 0
    nov = json.loads(capsys.readouterr().out)
    assert set(nov) >= {"novelty@4", "novelty@5", "novelty@6", "signature"}
    assert 0 <= nov["novelty@4"] <= 1

    dup = _write(tmp_path / "dup.jsonl", samples[:1] * 2)
    assert main(["eval", "bleu", str(dup), "--references", str(corpus)]) == 2
    assert "dup.jsonl:2: duplicate sample" in capsys.readouterr().err


# ----- bad flags and output paths are refused before any work -------------------------------------

def _tiny_problems(tmp_path):
    probs = [{"task_id": "t/0", "prompt": "def inc(x):\n", "test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"}]
    pfile = _write(tmp_path / "p.jsonl", probs)
    samples = _write(tmp_path / "s.jsonl", [{"task_id": "t/0", "completion": "    return x + 1\n"}])
    return pfile, samples


def test_eval_refuses_an_output_that_is_an_input(tmp_path, capsys):
    from conftest import make_tiny_corpus
    from fnbody.corpus.io import read_split

    pfile, samples = _tiny_problems(tmp_path)
    corpus = make_tiny_corpus(tmp_path / "corpus")
    refs = _write(tmp_path / "refs.jsonl", [{"task_id": reference_task_id(r), "prompt": r["prompt"], "body": r["body"]}
                                           for r in read_split(corpus, "test")])
    gen = _write(tmp_path / "gen.jsonl", [{"task_id": reference_task_id(r), "completion": "    pass\n", "prompt": r["prompt"]}
                                          for r in read_split(corpus, "test")])
    files = {p: p.read_bytes() for p in (pfile, samples, refs, gen)}
    for argv, named in (
        (["humaneval", samples, "--problems", pfile, "--out", samples], "is the same file as SAMPLES"),
        (["humaneval", samples, "--problems", pfile, "--out", tmp_path / "corpus" / ".." / "p.jsonl"], "is the same file as --problems"),
        (["bleu", gen, "--references", corpus, "--out", gen], "is the same file as SAMPLES"),
        (["bleu", gen, "--references", refs, "--out", refs], "is the same file as --references"),
        (["syntax", gen, "--out", gen], "is the same file as SAMPLES"),
        (["novelty", gen, "--corpus", corpus, "--out", gen], "is the same file as SAMPLES"),
    ):
        assert main(["eval", *map(str, argv)]) == 2
        assert named in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == files


@pytest.mark.parametrize("metric", ["humaneval", "syntax"])
@pytest.mark.parametrize("where, message", [(lambda t: t, "is a folder"), (lambda t: t / "s.jsonl" / "r.jsonl", "is not a folder"),
                                            (lambda t: "/proc/nope/r.jsonl", "cannot write a file in /proc")])
def test_eval_refuses_an_unwritable_out_before_work(tmp_path, capsys, metric, where, message):
    pfile, samples = _tiny_problems(tmp_path)
    argv = ["eval", metric, str(samples), "--problems", str(pfile), "--out", str(where(tmp_path))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "0"], "--timeout 0: must be a finite number of seconds > 0"),
    (["--timeout", "-1"], "--timeout -1: must be a finite number of seconds > 0"),
    (["--timeout", "nan"], "--timeout nan: must be a finite number of seconds > 0"),
    (["--memory-mb", "0"], "--memory-mb 0: must be a number of MiB >= 1"),
    (["--memory-mb", "-5"], "--memory-mb -5: must be a number of MiB >= 1"),
    (["--workers", "0"], "--workers 0: must be an integer >= 1"),
    (["--workers", "-1"], "--workers -1: must be an integer >= 1"),
])
def test_humaneval_refuses_out_of_range_limits(tmp_path, capsys, flags, message):
    pfile, samples = _tiny_problems(tmp_path)
    assert main(["eval", "humaneval", str(samples), "--problems", str(pfile), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s_humaneval_results.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["bleu", "--max-samples", "0"], "--max-samples 0: must be an integer >= 1"),
    (["bleu", "--max-samples", "-3"], "--max-samples -3: must be an integer >= 1"),
    (["novelty", "--max-train", "0"], "--max-train 0: must be an integer >= 1"),
    (["novelty", "--max-train", "-1"], "--max-train -1: must be an integer >= 1"),
    (["syntax", "--problems", "P"], "--references and --problems both give prompts: pass one of them"),
])
def test_corpus_metrics_refuse_bad_flags(tmp_path, capsys, tiny_corpus, argv, message):
    samples = _write(tmp_path / "s.jsonl", [{"task_id": "x", "completion": "    pass\n", "prompt": "def f():\n"}])
    metric, *flags = argv
    source = ["--corpus", str(tiny_corpus)] if metric == "novelty" else ["--references", str(tiny_corpus)]
    assert main(["eval", metric, str(samples), *source, *flags]) == 2
    assert message in capsys.readouterr().err


def test_missing_tasks_are_named_in_natural_order(problems):
    samples = [{"task_id": f"HumanEval/{i}", "completion": ""} for i in range(3)]
    with pytest.raises(FnbodyError, match=r"161 problem\(s\) have no samples, first 'HumanEval/3'"):
        evaluate_functional_correctness(samples, problems, ks=(1,))

"""The model-agnostic generation layer: stopping, prompt sources, resumable sample writing."""

import json

import pytest

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig
from fnbody.generate.prompts import load_prompts
from fnbody.generate.run import generate_samples
from fnbody.generate.stopping import def_indent, truncate_body

PROMPT = 'def f(x):\n    """Return x doubled."""\n'


@pytest.mark.parametrize("text, body, ended", [
    ("    return 2 * x\n\ndef g():\n    pass\n", "    return 2 * x\n\n", True),
    ("    y = 2 * x\n    return y", "    y = 2 * x\n    return y", False),
    ("    if x:\n        return 1\n    return 0\nprint(f(1))\n", "    if x:\n        return 1\n    return 0\n", True),
    ("    return x\nclass A", "    return x\n", True),
    ("    return x  # ok\n\n\n", "    return x  # ok\n\n\n", False),
])
def test_truncate_body_stops_at_dedent(text, body, ended):
    assert truncate_body(PROMPT, text) == (body, ended)


def test_truncate_body_method_and_stop_strings():
    prompt = 'class A:\n    def f(self):\n        """Doc."""\n'
    assert def_indent(prompt) == 4
    assert truncate_body(prompt, "        return 1\n    def g(self):\n") == ("        return 1\n", True)
    assert truncate_body(PROMPT, "    return x\n# END more", stop=("# END",)) == ("    return x\n", True)


def test_prompt_without_def_is_an_error():
    with pytest.raises(FnbodyError, match="no `def`"):
        def_indent('"""just a docstring"""\n')


class CountingGenerator:
    """A deterministic generator: the body returns the prompt's length; counts calls."""

    name = "counting"

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, prompts, cfg):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return [[Completion(f"    return {len(p)}\n", mean_logprob=-0.5) for _ in range(cfg.n)] for p in prompts]

    def stream(self, prompt, cfg):
        yield from self.generate([prompt], cfg)[0][0].text


def test_generate_samples_resumes_after_interrupt(tmp_path):
    rows = [{"task_id": f"t{i}", "prompt": PROMPT.replace("f(", f"f{i}(")} for i in range(10)]
    out = tmp_path / "samples.jsonl"
    cfg = GenerationConfig(n=2, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        generate_samples(CountingGenerator(fail_after=2), rows, cfg, out)
    assert not out.exists()  # partial results are never passed off as complete
    gen = CountingGenerator()
    n = generate_samples(gen, rows, cfg, out)
    assert n == 20
    assert gen.calls == 2  # 6 prompts were done before the interrupt; 4 remain in batches of 3
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["task_id"] for s in samples[::2]] == [r["task_id"] for r in rows]
    assert samples[0]["completion"] == f"    return {len(rows[0]['prompt'])}\n"
    assert not (tmp_path / "samples.jsonl.partial").exists()


def test_generate_samples_reuses_a_complete_file_only_when_asked_and_only_if_it_matches(tmp_path):
    rows = [{"task_id": f"t{i}", "prompt": PROMPT.replace("f(", f"f{i}(")} for i in range(5)]
    out = tmp_path / "samples.jsonl"
    cfg = GenerationConfig(n=2, batch_size=2)
    assert generate_samples(CountingGenerator(), rows, cfg, out) == 10
    before = out.read_text()
    gen = CountingGenerator()
    assert generate_samples(gen, rows, cfg, out, reuse_complete=True) == 10
    assert gen.calls == 0 and out.read_text() == before  # kept: nothing generated again
    gen = CountingGenerator()
    generate_samples(gen, rows, cfg, out)  # without the flag (the CLI's default) the file is generated afresh
    assert gen.calls == 3
    for other_rows, other_cfg in ((rows[:4], cfg), (rows, GenerationConfig(n=1, batch_size=2))):  # other rows, other n
        gen = CountingGenerator()
        n = generate_samples(gen, other_rows, other_cfg, out, reuse_complete=True)
        assert gen.calls > 0 and n == len(other_rows) * other_cfg.n
    gen = CountingGenerator()
    generate_samples(gen, rows, cfg, out, resume=False, reuse_complete=True)  # no resuming at all: generated afresh
    assert gen.calls == 3


def test_pipeline_generation_time_is_none_only_for_a_kept_file(tmp_path):
    from fnbody.pipeline.tasks import _generate_timed

    rows = [{"task_id": f"t{i}", "prompt": PROMPT.replace("f(", f"f{i}(")} for i in range(3)]
    out, cfg = tmp_path / "samples.jsonl", GenerationConfig(n=1, batch_size=2)
    assert isinstance(_generate_timed(CountingGenerator(), rows, cfg, out), float)  # generated
    assert _generate_timed(CountingGenerator(), rows, cfg, out) is None  # kept as it was
    assert isinstance(_generate_timed(CountingGenerator(), rows[:2], cfg, out), float)  # a file for other rows: generated again


def test_load_prompts_sources(tmp_path, tiny_corpus):
    rows = load_prompts(str(tiny_corpus), split="test", max_samples=5)
    assert len(rows) == 5 and all(r["prompt"].startswith("def ") for r in rows)
    assert len({r["task_id"] for r in rows}) == 5
    he = load_prompts("humaneval")
    assert len(he) == 164 and he[0]["task_id"] == "HumanEval/0"
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"task_id": "a", "prompt": "def f():\\n"}\n{"task_id": "a", "prompt": "def g():\\n"}\n')
    with pytest.raises(FnbodyError, match=r"p.jsonl:2: duplicate task_id"):
        load_prompts(str(bad))


# ----- resuming only the same job ------------------------------------------------------------------

ROWS = [{"task_id": f"t{i}", "prompt": PROMPT.replace("f(", f"f{i}(")} for i in range(6)]


class OtherGenerator(CountingGenerator):
    name = "other"


def _interrupted(out, cfg=None, job=None):
    """Leave `out`.partial after 1 of 3 batches of ROWS, as a Ctrl-C does."""
    with pytest.raises(KeyboardInterrupt):
        generate_samples(CountingGenerator(fail_after=1), ROWS, cfg or GenerationConfig(n=2, batch_size=2), out, job=job)
    return out.with_name(out.name + ".partial")


@pytest.mark.parametrize("gen, rows, cfg, job, message", [
    (OtherGenerator(), ROWS, GenerationConfig(n=2, batch_size=2), None, r"generator: 'counting' there, 'other' now"),
    (CountingGenerator(), ROWS, GenerationConfig(n=1, batch_size=2), None, r"decoding.n: 2 there, 1 now"),
    (CountingGenerator(), ROWS, GenerationConfig(n=2, batch_size=2, temperature=0.7), None, r"decoding.temperature: 0.0 there, 0.7 now"),
    (CountingGenerator(), ROWS, GenerationConfig(n=2, batch_size=2, max_new_tokens=9), None, r"decoding.max_new_tokens: 256 there, 9 now"),
    (CountingGenerator(), ROWS, GenerationConfig(n=2, batch_size=2, seed=3), None, r"decoding.seed: 0 there, 3 now"),
    (CountingGenerator(), ROWS[:5], GenerationConfig(n=2, batch_size=2), None, r"the prompts \(6 there, 5 now\)"),
    (CountingGenerator(), ROWS[:5] + [{"task_id": "t5", "prompt": PROMPT}], GenerationConfig(n=2, batch_size=2), None,
     r"the prompts \(other task ids or prompt text\)"),
    (CountingGenerator(), ROWS, GenerationConfig(n=2, batch_size=2), {"run": "/elsewhere"}, r"job.run: None there, '/elsewhere' now"),
])
def test_resume_refuses_a_partial_file_from_another_job(tmp_path, gen, rows, cfg, job, message):
    out = tmp_path / "samples.jsonl"
    partial = _interrupted(out)
    before = partial.read_bytes()
    with pytest.raises(FnbodyError, match=r"samples.jsonl.partial: this unfinished output belongs to another generation job.*" + message +
                       r".*delete .*samples.jsonl.partial .*--overwrite"):
        generate_samples(gen, rows, cfg, out, job=job)
    assert gen.calls == 0 and partial.read_bytes() == before and not out.exists()  # nothing generated, mixed or lost
    n = generate_samples(gen, rows, cfg, out, resume=False, job=job)  # what --overwrite does: start again
    assert n == len(rows) * cfg.n and not partial.exists() and not (tmp_path / "samples.jsonl.partial.json").exists()
    assert {json.loads(line)["model"] for line in out.read_text().splitlines()} == {gen.name}


def test_resume_continues_the_same_job_with_another_batch_size(tmp_path):
    out = tmp_path / "samples.jsonl"
    _interrupted(out, job={"run": "/r"})
    gen = CountingGenerator()
    assert generate_samples(gen, ROWS, GenerationConfig(n=2, batch_size=4), out, job={"run": "/r"}) == 12
    assert gen.calls == 1  # the 4 prompts left, in one batch of 4


def test_resume_refuses_a_partial_file_without_its_record(tmp_path):
    out = tmp_path / "samples.jsonl"
    partial = tmp_path / "samples.jsonl.partial"
    partial.write_text(json.dumps({"task_id": "t0", "prompt": ROWS[0]["prompt"], "completion": "x", "model": "char-rnn:old"}) + "\n")
    with pytest.raises(FnbodyError, match=r"samples.jsonl.partial: an unfinished samples file with no samples.jsonl.partial.json"):
        generate_samples(CountingGenerator(), ROWS, GenerationConfig(n=1), out)
    assert partial.exists() and not out.exists()


def test_resume_generates_again_a_task_cut_short(tmp_path):
    out = tmp_path / "samples.jsonl"
    partial = _interrupted(out)  # t0 and t1 done, 2 samples each
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:20])  # t1 lost its second sample, and its line was torn mid-write
    gen = CountingGenerator()
    assert generate_samples(gen, ROWS, GenerationConfig(n=2, batch_size=2), out) == 12
    assert gen.calls == 3  # t1..t5: t1 again
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["task_id"] for s in samples] == [r["task_id"] for r in ROWS for _ in range(2)]


def test_a_generator_returning_the_wrong_number_of_completions_is_refused(tmp_path):
    class Short(CountingGenerator):
        def generate(self, prompts, cfg):
            return [outs[:-1] for outs in super().generate(prompts, cfg)]

    out = tmp_path / "samples.jsonl"
    with pytest.raises(FnbodyError, match=r"returned 1 completions for task_id 't0', not n=2"):
        generate_samples(Short(), ROWS, GenerationConfig(n=2), out)
    assert not out.exists()


def test_reuse_complete_keeps_only_a_file_of_the_same_generator(tmp_path):
    out = tmp_path / "samples.jsonl"
    cfg = GenerationConfig(n=1, batch_size=6)
    generate_samples(CountingGenerator(), ROWS, cfg, out)
    gen = OtherGenerator()
    generate_samples(gen, ROWS, cfg, out, reuse_complete=True)
    assert gen.calls == 1 and {json.loads(line)["model"] for line in out.read_text().splitlines()} == {"other"}


# ----- prompt files are checked when read ----------------------------------------------------------

@pytest.mark.parametrize("row, message", [
    ('{"task_id": "x", "prompt": "just text"}', r"p.jsonl:3: the prompt of task_id 'x' has no `def` line"),
    ('{"task_id": "x", "prompt": ""}', r"p.jsonl:3: the prompt of task_id 'x' has no `def` line"),
    ('{"task_id": "x", "prompt": "def f():\\n    \\"\\"\\"\\ud800\\"\\"\\"\\n"}', r"p.jsonl:3: the prompt of task_id 'x' has a character "
                                                                               r"that is not valid UTF-8 \('\\ud800' at offset 16"),
    ('{"task_id": "x\\udc80", "prompt": "def f():\\n"}', r"p.jsonl:3: task_id 'x\\udc80' has a character that is not valid UTF-8"),
])
def test_load_prompts_checks_every_prompt_and_names_line_and_task(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"task_id": "a", "prompt": PROMPT}) + "\n" + json.dumps({"task_id": "b", "prompt": PROMPT}) + "\n" + row + "\n")
    with pytest.raises(FnbodyError, match=message):
        load_prompts(str(path))
    with pytest.raises(FnbodyError, match=message):  # a row past --max-samples is still checked: the file is bad
        load_prompts(str(path), max_samples=1)
    with pytest.raises(FnbodyError, match=r"--max-samples -1: must be >= 0"):
        load_prompts(str(path), max_samples=-1)


# ----- the command line: refusals come before a model is loaded -----------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """(main, a prompts file, a fake run folder); every run folder opens as a CountingGenerator, or OtherGenerator for one named 'other'."""
    from fnbody.cli import main

    loads = []

    def fake_load(run, device="auto", **kw):
        loads.append(str(run))
        return OtherGenerator() if str(run).endswith("other") else CountingGenerator(fail_after=call.fail_after)

    monkeypatch.setattr("fnbody.generate.load.load_generator", fake_load)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    run = tmp_path / "run"
    run.mkdir()
    (run / "fnbody.json").write_text('{"kind": "char-rnn"}\n')

    def call(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        return rc, capsys.readouterr()

    call.loads, call.fail_after = loads, None  # fail_after: the next CountingGenerator is interrupted after that many batches
    return call, prompts, run


def test_cli_generate_refuses_an_existing_output_or_an_input_as_output(cli, tmp_path):
    call, prompts, run = cli
    before = prompts.read_bytes()
    rc, out = call("generate", run, "--input", prompts, "--output", tmp_path / "x" / ".." / "p.jsonl")
    assert rc == 2 and "is the same file as --input" in out.err and prompts.read_bytes() == before
    samples = tmp_path / "s.jsonl"
    assert call("generate", run, "--input", prompts, "--output", samples)[0] == 0
    first = samples.read_text()
    rc, out = call("generate", tmp_path / "other", "--input", prompts, "--output", samples)
    assert rc == 2 and f"{samples} exists; pass --overwrite to replace it" in out.err and samples.read_text() == first
    assert call.loads == [str(run)]  # refused before loading the model
    assert call("generate", tmp_path / "other", "--input", prompts, "--output", samples, "--overwrite")[0] == 0
    assert '"model": "other"' in samples.read_text()


@pytest.mark.parametrize("where, message", [
    (lambda t: t, "is a folder; give a file path"),
    (lambda t: t / "p.jsonl" / "o.jsonl", "is not a folder"),
    (lambda t: "/proc/nope/o.jsonl", "cannot write a file in /proc"),
])
def test_cli_generate_checks_the_output_path_before_loading(cli, tmp_path, where, message):
    call, prompts, run = cli
    rc, out = call("generate", run, "--input", prompts, "--output", where(tmp_path))
    assert rc == 2 and "--output" in out.err and message in out.err and "Traceback" not in out.err
    assert call.loads == [] and not list(tmp_path.glob("*.partial"))


def test_cli_generate_resume_refuses_another_model_or_settings(cli, tmp_path):
    call, prompts, run = cli
    samples = tmp_path / "s.jsonl"
    call.fail_after = 1
    assert call("generate", run, "--input", prompts, "--output", samples, "--batch-size", "1")[0] == 130  # interrupted after one prompt
    call.fail_after = None
    other = tmp_path / "other"
    other.mkdir()
    for argv, message in (([other], "generator: 'counting' there, 'other' now"), ([run, "--n", "2"], "decoding.n: 1 there, 2 now"),
                          ([run, "--checked", "2"], "job.checked: 0 there, 2 now"), ([run, "--max-samples", "2"], "the prompts (3 there, 2 now)")):
        rc, out = call("generate", *argv, "--input", prompts, "--output", samples)
        assert rc == 2 and message in out.err and "--overwrite" in out.err and not samples.exists(), (argv, out.err)
    weights = run / "checkpoints" / "best" / "model.safetensors"  # the model retrained in place: fnbody.json unchanged
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"new weights")
    rc, out = call("generate", run, "--input", prompts, "--output", samples)
    assert rc == 2 and "job.weights_files_sha256" in out.err and "--overwrite" in out.err and not samples.exists(), out.err
    weights.unlink()
    rc, out = call("generate", run, "--input", prompts, "--output", samples)
    assert rc == 0 and "wrote 3 samples for 3 prompts" in out.err
    assert {json.loads(line)["model"] for line in samples.read_text().splitlines()} == {"counting"}


@pytest.mark.parametrize("flags, message", [
    (["--checked", "2", "--checked-temperature", "0"], "--checked-temperature 0: must be a finite number > 0"),
    (["--checked", "2", "--checked-temperature", "-1"], "--checked-temperature -1: must be a finite number > 0"),
    (["--checked", "2", "--checked-temperature", "nan"], "--checked-temperature nan: must be a finite number > 0"),
    (["--max-samples", "0"], "--max-samples 0: must be an integer >= 1"),
    (["--max-samples", "-2"], "--max-samples -2: must be an integer >= 1"),
])
def test_cli_generate_refuses_bad_flags_before_loading(cli, tmp_path, flags, message):
    call, prompts, run = cli
    rc, out = call("generate", run, "--input", prompts, "--output", tmp_path / "s.jsonl", *flags)
    assert rc == 2 and message in out.err and call.loads == []


def test_cli_require_body_notes_it_does_nothing_for_other_models(cli, tmp_path):
    call, prompts, run = cli
    rc, out = call("generate", run, "--input", prompts, "--output", tmp_path / "s.jsonl", "--require-body")
    assert rc == 0 and "note: --require-body applies to transformers models only" in out.err


def test_cli_complete_reads_utf8_with_or_without_bom_and_refuses_other_bytes(cli, tmp_path, monkeypatch):
    import io

    call, _, run = cli
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbf" + PROMPT.encode())
    rc, out = call("complete", run, bom, "--json", "--show-prompt")
    assert rc == 0 and json.loads(out.out) == [{"prompt": PROMPT, "completion": f"    return {len(PROMPT)}\n", "finish_reason": "stop",
                                               "mean_logprob": -0.5}]
    rc, out = call("complete", run, bom, "--json")
    assert rc == 0 and "prompt" not in json.loads(out.out)[0]
    latin = tmp_path / "latin1.py"
    latin.write_bytes(PROMPT.replace("doubled", "verdoppelt \xfc").encode("latin-1"))
    rc, out = call("complete", run, latin)
    assert rc == 2 and "latin1.py: the prompt is not UTF-8 text (byte 0xfc at offset 37)" in out.err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'def f():\n    """\xed\xa0\x80"""\n')))  # an encoded lone surrogate
    rc, out = call("complete", run, "-")
    assert rc == 2 and "<stdin>: the prompt is not UTF-8 text (byte 0xed at offset 16)" in out.err and "Traceback" not in out.err
    assert call.loads == [str(run), str(run)]


def test_checked_candidates_are_sampled_at_the_temperature_given(tmp_path):
    from fnbody.augment.checked import ExecutionCheckedGenerator

    class Recording(CountingGenerator):
        def generate(self, prompts, cfg):
            self.temps = getattr(self, "temps", []) + [cfg.temperature]
            return super().generate(prompts, cfg)

    for t in (0.3, 0.0):
        rec = Recording()
        ExecutionCheckedGenerator(rec, n_candidates=3, temperature=t).sample([PROMPT], GenerationConfig())
        assert rec.temps == [0.0, t]  # greedy, then the samples: never silently at 0.8

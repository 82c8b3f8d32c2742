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

"""Execution-checked sampling: sample N bodies, keep those that parse, rank by the docstring's doctests.

For each prompt: the greedy body plus N-1 sampled ones (or N sampled ones), duplicates merged;
candidates whose `prompt + body` does not parse are dropped; when the prompt's docstring has
examples, each remaining candidate runs them in the sandbox (`fnbody.evaluate.execution`, never
in this process); candidates that pass come first, then the rest, each group by mean
log-probability (or, with a `NeighbourRanker`, by agreement with the bodies of the prompt's retrieved
training functions, then log-probability: `fnbody.augment.rerank`). Examples are doctests (`>>>`) or, in a docstring without doctests, the
informal one-line forms docstrings also use: `f(1, 2) == 3`, `f(1, 2) => 3`, `f(x) ➞ y`,
`f(x) -> y`, `f(x) returns y`, `f(x) should return y`, `f(x) = y`, when both the arguments
and the expected value are Python literals (`true`/`false` read as booleans). Only the
docstring's own examples are used: the hidden tests of a benchmark are never seen. When no candidate parses, the best unparsable one is
returned (flagged in the diagnostics) so every prompt still gets an answer.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig, Generator

# Appended to prompt + body; runs the docstring's examples against the module's own globals.
_HARNESS = '''

def _fnbody_run_doctests(doc):
    import doctest
    test = doctest.DocTestParser().get_doctest(doc, dict(globals()), "docstring", None, 0)
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    result = runner.run(test, out=lambda s: None)
    if result.failed:
        raise AssertionError(f"{result.failed} of {result.attempted} doctest examples failed")

'''


# Assertions for the informal examples; a float result is compared with a small tolerance.
_CALL_HARNESS = '''

def _fnbody_check_examples(cases):
    import math
    failed = []
    for call, want in cases:
        try:
            got = eval(call, dict(globals()))
        except Exception as e:
            failed.append(f"{call} raised {type(e).__name__}")
            continue
        if isinstance(want, float) and isinstance(got, (int, float)):
            same = math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
        else:
            same = got == want
        if not same:
            failed.append(f"{call} != {want!r}")
    if failed:
        raise AssertionError(f"{len(failed)} of {len(cases)} docstring examples failed: " + "; ".join(failed[:3]))

'''

_OP_RE = re.compile(r"\s*#?\s*(==>|==|=>|➞|->|→|should\s+return|returns?|=)\s*", re.IGNORECASE)
_BOOL_WORDS = {"true": "True", "false": "False"}


def _literal(src: str) -> tuple[bool, object]:
    """(True, value) when `src` is a Python literal (`true`/`false` accepted), else (False, None)."""
    src = _BOOL_WORDS.get(src.strip(), src.strip())
    try:
        return True, ast.literal_eval(src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _call_at(line: str, start: int, name: str) -> int | None:
    """End offset of the shortest `name(...)` starting at `start` that parses as a call with literal arguments."""
    for end in (i + 1 for i, ch in enumerate(line) if i > start and ch == ")"):
        try:
            node = ast.parse(line[start:end], mode="eval").body
        except SyntaxError:
            continue
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name):
            return None
        try:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                ast.literal_eval(arg)
        except (ValueError, SyntaxError, TypeError):
            return None
        return end
    return None


def call_examples(prompt: str) -> list[tuple[str, object]]:
    """(call source, expected value) of each one-line `name(args) OP value` example in the docstring of the prompt's function.

    Only calls of the function being written with literal arguments, and a literal expected value, count;
    anything else on such a line (prose, a worked sum, a trailing comment the value cannot absorb) skips it.
    """
    from fnbody.augment.prompt import function_name, prompt_docstring

    name = function_name(prompt)
    out: list[tuple[str, object]] = []
    for line in prompt_docstring(prompt).splitlines():
        for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*\(", line):
            end = _call_at(line, m.start(), name)
            op = _OP_RE.match(line, end) if end is not None else None
            if op is None:
                continue
            rest = line[op.end():].strip()
            for want_src in (rest, rest.split(" #", 1)[0], rest.rstrip(".,;").strip(), rest.split(" #", 1)[0].rstrip(".,;").strip()):
                ok, want = _literal(want_src)
                if ok and want_src:
                    out.append((line[m.start():end], want))
                    break
    return out


def doctest_examples(prompt: str) -> list[tuple[str, str]]:
    """(source, expected output) of each `>>>` example in the prompt's docstring, via the stdlib doctest parser."""
    import doctest

    from fnbody.augment.prompt import prompt_docstring

    doc = prompt_docstring(prompt)
    try:
        return [(e.source, e.want) for e in doctest.DocTestParser().get_examples(doc)]
    except ValueError:  # malformed examples (e.g. bad indentation) count as none
        return []


def example_check(prompt: str) -> tuple[int, str]:
    """(examples, check code) for the prompt's docstring: its doctests, else its one-line call examples; (0, "") when none.

    The check code goes after `prompt + body` and raises AssertionError when an example fails.
    """
    from fnbody.augment.prompt import prompt_docstring

    examples = doctest_examples(prompt)
    if examples:
        return len(examples), _HARNESS + f"_fnbody_run_doctests({prompt_docstring(prompt)!r})\n"
    cases = call_examples(prompt)
    return (len(cases), _CALL_HARNESS + f"_fnbody_check_examples({cases!r})\n") if cases else (0, "")


def doctest_program(prompt: str, body: str) -> str | None:
    """The program that checks `body` against the docstring's examples (doctests, else call examples); None when there are none."""
    n, check = example_check(prompt)
    return prompt + body + check if n else None


@dataclass
class Candidate:
    """One sampled body and what checking it found."""

    text: str
    mean_logprob: float | None
    finish_reason: str
    num_tokens: int
    source: str  # "greedy" or "sample"
    parses: bool = True
    syntax_error: str | None = None
    doctests: int = 0  # docstring examples checked (doctests, else one-line call examples; 0: nothing to run)
    status: str = "not run"  # sandbox status, or "not run"
    reason: str = ""
    passed: bool | None = None  # None when not run
    agreement: float | None = None  # sentence BLEU against the retrieved neighbours' bodies (None: not ranked by neighbours)
    rank: int = 0

    def sort_key(self) -> tuple:
        # Passing first; then by agreement with the retrieved neighbours when measured; then by mean log-probability
        # (a missing one ranks last).
        lp = self.mean_logprob if self.mean_logprob is not None else float("-inf")
        return (not self.parses, self.passed is not True, -(self.agreement or 0.0), -lp)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def kept(ranked: list[Candidate]) -> list[Candidate]:
    """What a checked generator returns from a ranked list: the candidates that parse, or the best one when none does."""
    return [c for c in ranked if c.parses] or ranked[:1]


def rank_candidates(cands: list[Candidate]) -> list[Candidate]:
    """Candidates in rank order (stable), with `rank` set from 1; unparsable ones last."""
    ranked = sorted(cands, key=Candidate.sort_key)
    for i, c in enumerate(ranked, 1):
        c.rank = i
    return ranked


class ExecutionCheckedGenerator:
    """A `Generator` returning the best of N sampled bodies by parse check, doctests and log-probability."""

    def __init__(self, base: Generator, n_candidates: int = 8, temperature: float = 0.8, top_p: float = 0.95,
                 include_greedy: bool = True, limits=None, workers: int | None = None, ranker=None) -> None:
        from fnbody.evaluate.execution import Limits

        if n_candidates < 1:
            raise FnbodyError(f"checked: n_candidates must be >= 1, got {n_candidates}")
        if temperature <= 0 and n_candidates > 1 and not include_greedy:
            raise FnbodyError("checked: sampling N candidates needs temperature > 0")
        self.base = base
        self.n_candidates = n_candidates
        self.temperature = temperature
        self.top_p = top_p
        self.include_greedy = include_greedy
        self.limits = limits or Limits(timeout=5.0)
        self.workers = workers
        self.ranker = ranker  # a NeighbourRanker: order by agreement with retrieved bodies instead of log-probability
        self.name = f"{base.name}+checked{n_candidates}" + (f"+nbrank{ranker.k}" if ranker is not None else "")
        self.last_candidates: list[list[Candidate]] = []
        count = getattr(base, "count_tokens", None)
        if count is not None:
            self.count_tokens = count

    def sample(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Candidate]]:
        """The raw candidates for each prompt (greedy first when included), duplicates merged."""
        from dataclasses import replace

        per: list[list[Candidate]] = [[] for _ in prompts]
        n_sampled = self.n_candidates - (1 if self.include_greedy else 0)
        if self.include_greedy:
            for i, outs in enumerate(self.base.generate(prompts, replace(cfg, n=1, temperature=0.0))):
                per[i] += [self._cand(c, "greedy") for c in outs]
        if n_sampled > 0:
            sampled_cfg = replace(cfg, n=n_sampled, temperature=self.temperature, top_p=self.top_p)
            for i, outs in enumerate(self.base.generate(prompts, sampled_cfg)):
                per[i] += [self._cand(c, "sample") for c in outs]
        merged = []
        for cands in per:
            seen: dict[str, Candidate] = {}
            for c in cands:
                seen.setdefault(c.text, c)  # same text: same outcome; keep the first (greedy before samples)
            merged.append(list(seen.values()))
        return merged

    @staticmethod
    def _cand(c: Completion, source: str) -> Candidate:
        return Candidate(text=c.text, mean_logprob=c.mean_logprob, finish_reason=c.finish_reason, num_tokens=c.num_tokens, source=source)

    def check(self, prompts: Sequence[str], candidates: list[list[Candidate]]) -> list[list[Candidate]]:
        """Parse-check every candidate, run the doctests of those that parse in the sandbox, score agreement with the
        retrieved neighbours (with a ranker), rank each list."""
        from fnbody.evaluate.execution import run_programs
        from fnbody.evaluate.syntax import syntax_error

        jobs: list[tuple[Candidate, str]] = []
        if self.ranker is not None:
            for cands, refs in zip(candidates, self.ranker.references(prompts)):
                for c in cands:
                    c.agreement = self.ranker.agreement(c.text, refs)
        for prompt, cands in zip(prompts, candidates):
            n_examples, check = example_check(prompt)  # the docstring is parsed once per prompt, not per candidate
            for c in cands:
                c.syntax_error = syntax_error(prompt + c.text)
                c.parses = c.syntax_error is None
                c.doctests = n_examples
                if c.parses and n_examples:
                    jobs.append((c, prompt + c.text + check))
        if jobs:
            results = run_programs([src for _, src in jobs], self.limits, workers=self.workers)
            for (c, _), r in zip(jobs, results):
                c.status, c.reason, c.passed = r.status, r.reason, r.passed
        return [rank_candidates(cands) for cands in candidates]

    # ----- the Generator interface --------------------------------------------------------------
    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        """The top `cfg.n` checked candidates per prompt (parsing ones only, unless none parses)."""
        self.last_candidates = self.check(prompts, self.sample(prompts, cfg))
        return [[Completion(text=c.text, finish_reason=c.finish_reason, mean_logprob=c.mean_logprob, num_tokens=c.num_tokens)
                 for c in kept(ranked)[:cfg.n]] for ranked in self.last_candidates]

    def choose(self, prompts: Sequence[str], candidates: list[list[Candidate]]) -> list[str]:
        """The body `generate` would return first, for candidates already drawn (e.g. ranked again by another ranker)."""
        return [next((c.text for c in kept(ranked)), "") for ranked in self.check(prompts, candidates)]

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """Checking needs every candidate finished: generate, then yield the chosen body."""
        from dataclasses import replace

        best = self.generate([prompt], replace(cfg, n=1))[0]
        if best and best[0].text:
            yield best[0].text
        return best[0] if best else None  # its finish_reason, for the server

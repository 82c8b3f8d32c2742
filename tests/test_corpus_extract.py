"""Extraction, tokens, filters, dedup and split: the pure parts of the corpus builder."""

import ast
import textwrap

import pytest

from fnbody.corpus.dedup import dedup_exact, dedup_near, jaccard
from fnbody.corpus.extract import decode_source, functions_from_source
from fnbody.corpus.filters import FilterConfig, function_skip_reason, is_dunder, is_standalone, is_stub, is_test_function, is_test_path
from fnbody.corpus.records import Options, TaskResult, dedup_keys
from fnbody.corpus.split import split_of
from fnbody.tokens.code import code_tokens, docstring_tokens, first_paragraph

SRC = textwrap.dedent('''\
    import os

    class Shape:
        """A shape."""

        @property
        @staticmethod
        def area(a: dict = {1: 2},  # c: d
                 b=3) -> "x:y":
            """Return the área of it.

            Second paragraph."""
            x = 1  # comment
            return x  # trailing

        class Inner:
            async def go(self):
                \'\'\'Go somewhere now.\'\'\'
                return 1

    def outer():
        """Outer does things."""
        def inner(x):
            """Inner doc here."""
            return x
        return inner

    def nodoc():
        return 1
    ''')


def naive_segment(src: str, name: str) -> str:
    """The reference: the lines from the first decorator to the node's end column, textwrap-dedented."""
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = src.split("\n")[start - 1 : node.end_lineno]
            lines[-1] = lines[-1].encode()[: node.end_col_offset].decode()
            return textwrap.dedent("\n".join(lines))
    raise KeyError(name)


def test_extracts_qualified_functions_with_exact_prompt_body():
    fns = {f.func_name: f for f in functions_from_source(SRC)}
    assert set(fns) == {"Shape.area", "Shape.Inner.go", "outer", "outer.inner"}
    area = fns["Shape.area"]
    assert area.prompt + area.body == area.code == naive_segment(SRC, "area")
    assert area.code.startswith("@property\n@staticmethod\ndef area(")
    assert area.signature == '@property\n@staticmethod\ndef area(a: dict = {1: 2},  # c: d\n         b=3) -> "x:y":'
    assert area.prompt.endswith('Second paragraph."""\n')
    assert area.body == "    x = 1  # comment\n    return x"
    assert area.lineno == 6 and area.class_name == "Shape"
    assert fns["Shape.Inner.go"].signature == "async def go(self):"
    assert fns["outer.inner"].code == 'def inner(x):\n    """Inner doc here."""\n    return x'
    for f in fns.values():
        assert f.prompt + f.body == naive_segment(SRC, f.name)


def test_code_tokens_drop_comments_and_docstring():
    code = 'def f(a, **kw):\n    """Doc."""\n    # note\n    return a + "s"  # tail\n'
    assert code_tokens(code) == ["def", "f", "(", "a", ",", "**", "kw", ")", ":", "return", "a", "+", '"s"']
    # A string expression that is not a statement of its own is code, not a docstring.
    assert '"x"' in code_tokens('def g():\n    "x".join([])\n')


def test_docstring_tokens_first_paragraph_csn_regex():
    assert docstring_tokens("str->list of str\n    Give you URLs.\n    \n    More.") == ["str", "-", ">", "list", "of", "str", "Give", "you", "URLs", "."]
    assert first_paragraph("  One.\n\nTwo.") == "One."


def test_decode_handles_bom_cookie_and_crlf():
    assert decode_source(b"\xef\xbb\xbfx = 1\r\ny = 2\r") == "x = 1\ny = 2\n"
    assert decode_source("# -*- coding: latin-1 -*-\ns = 'é'\n".encode("latin-1")).endswith("'é'\n")
    with pytest.raises((UnicodeDecodeError, SyntaxError)):
        decode_source(b"s = '\xff\xfe'\n")


@pytest.mark.parametrize("path,expected", [
    ("pkg/tests/helpers.py", True), ("pkg/test_mod.py", True), ("pkg/mod_test.py", True), ("conftest.py", True),
    ("pkg/testing.py", False), ("pkg/contest.py", False), ("pkg/attest/x.py", False),
])
def test_is_test_path(path, expected):
    assert is_test_path(path) is expected


def test_function_filters():
    assert is_test_function("test_x", None) and is_test_function("run", "TestFoo") and not is_test_function("attest", None)
    assert is_dunder("__init__") and not is_dunder("__x") and not is_dunder("_private_")
    stub = ast.parse("def f():\n    'd'\n    raise NotImplementedError('x')\n").body[0].body[1:]
    assert is_stub(stub) and is_stub([]) and not is_stub(ast.parse("return 1").body)
    cfg = FilterConfig()
    assert function_skip_reason(cfg, "f", None, "a\nb", 5, []) == "stub_body"
    assert function_skip_reason(cfg, "f", None, "a\nb", 5, None) == "short_code"
    assert function_skip_reason(cfg, "f", None, "a\nb\nc", 2, None) == "short_docstring"
    assert function_skip_reason(cfg, "f", None, "a\nb\nc", 3, None) is None
    off = FilterConfig(drop_tests=False, drop_dunder=False, drop_stubs=False, min_code_lines=0, min_docstring_tokens=0)
    assert function_skip_reason(off, "test___init__", "TestX", "a", 0, []) is None


def _rec(tokens):
    return {"code_tokens": tokens, **dedup_keys(tokens, near=True)}


@pytest.mark.parametrize("code,name,expected", [
    ("def f(xs: List[int]) -> int:\n    import os\n    n = len(xs)\n    return math.floor(n) + os.sep.count('/')", "f", True),
    ("def f(s):\n    def g(c):\n        return c.upper()\n    return ''.join(g(c) for c in s if c not in VOWELS)", "f", False),
    ("def f(s):\n    try:\n        return int(s)\n    except ValueError as e:\n        return str(e)", "f", True),
    ("def f(self):\n    return 1", "C.f", False),
    ("def f(x):\n    return helper(x)", "f", False),
    ("def f(x:\n    return", "f", False),
    ("x = 1", "f", False),
])
def test_is_standalone(code, name, expected):
    assert is_standalone(code, name) is expected


def test_dedup_exact_and_near():
    base = [f"t{i}" for i in range(40)]
    near = base[:-2] + ["x1", "x2"]  # Jaccard 38/42 = 0.905
    far = base[:20] + [f"y{i}" for i in range(20)]  # Jaccard 20/60
    recs = [_rec(base), _rec(list(base)), _rec(near), _rec(far)]
    kept, removed = dedup_exact(recs)
    assert removed == 1 and len(kept) == 3
    kept2, removed2 = dedup_near(kept, threshold=0.8)
    assert removed2 == 1 and [r["code_tokens"] for r in kept2] == [base, far]
    assert jaccard(set(base), set(near)) == pytest.approx(38 / 42)


def test_dedup_keep_first_keeps_the_base_and_checks_the_rest_against_it():
    base = [f"t{i}" for i in range(40)]
    near = base[:-2] + ["x1", "x2"]
    other = [f"z{i}" for i in range(40)]
    fixed = [_rec(base), _rec(list(base))]  # a base that itself repeats: both are kept all the same
    kept, removed = dedup_exact(fixed + [_rec(list(base)), _rec(other)], keep_first=2)
    assert removed == 1 and [r["code_tokens"] for r in kept] == [base, base, other]
    kept, removed = dedup_near(fixed + [_rec(near), _rec(other)], threshold=0.8, keep_first=2)
    assert removed == 1 and [r["code_tokens"] for r in kept] == [base, base, other]
    kept, removed = dedup_near([_rec(near)] + fixed, threshold=0.8, keep_first=1)  # later base copies are not exempt
    assert removed == 2


def test_split_is_deterministic_and_roughly_80_10_10():
    repos = [f"owner/repo{i}" for i in range(3000)]
    parts = [split_of(r, seed=0) for r in repos]
    assert parts == [split_of(r, seed=0) for r in repos]
    share = parts.count("train") / len(parts)
    assert 0.77 < share < 0.83 and 0.08 < parts.count("test") / len(parts) < 0.12
    assert parts != [split_of(r, seed=1) for r in repos]


def test_task_result_strict_keeps_first_problem():
    res = TaskResult()
    res.skip("syntax_error", "a.py", strict=True)
    res.skip("nul_bytes", "b.py", strict=True)
    assert res.problem == ("syntax_error", "a.py") and res.skips["nul_bytes"] == 1
    assert Options().max_bytes == 2 << 20

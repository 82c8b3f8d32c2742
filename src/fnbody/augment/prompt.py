"""What a prompt asks for: the name and docstring of the function being written (its last `def`)."""

from __future__ import annotations

import ast
import re
import warnings

from fnbody.generate.stopping import def_indent

_DEF_NAME_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)", re.MULTILINE)
_TRIPLE_RE = re.compile(r'("""|\'\'\')(.*?)(?:\1|\Z)', re.DOTALL)


def function_name(prompt: str) -> str:
    """Name of the last `def` in the prompt (FnbodyError when there is none)."""
    def_indent(prompt)
    return _DEF_NAME_RE.findall(prompt)[-1]


def prompt_docstring(prompt: str) -> str:
    """The docstring of the prompt's last function, as Python would see it ("" when it has none).

    A prompt stops before the body, so a `pass` is appended at the body's indent to parse it;
    a prompt that still does not parse falls back to the first triple-quoted string after the def.
    """
    indent = def_indent(prompt)
    name = function_name(prompt)
    src = prompt if prompt.endswith("\n") else prompt + "\n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(src + " " * (indent + 4) + "pass\n")
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        if funcs:
            # The function being written is the one that starts last in the prompt.
            return ast.get_docstring(max(funcs, key=lambda n: n.lineno)) or ""
    last_def = list(_DEF_NAME_RE.finditer(prompt))[-1]
    m = _TRIPLE_RE.search(prompt, last_def.end())
    return m.group(2).strip() if m else ""


def query_text(prompt: str) -> str:
    """The search query for a prompt: its docstring's first paragraph, else the function name's words, else "" (no search)."""
    doc = prompt_docstring(prompt).strip()
    first = doc.split("\n\n", 1)[0].strip() if doc else ""
    # Doctest lines are code, not a description of the function.
    first = "\n".join(line for line in first.splitlines() if not line.strip().startswith(">>>")).strip()
    for candidate in (first, function_name(prompt).replace("_", " ").strip()):
        if candidate and _searchable(candidate):
            return candidate
    return ""  # nothing to search for (e.g. `def f():` documented as "a <-- -a"): no retrieved context


def _searchable(text: str) -> bool:
    from fnbody.errors import FnbodyError
    from fnbody.search.data import query_tokens

    try:
        query_tokens(text)
    except FnbodyError:
        return False
    return True

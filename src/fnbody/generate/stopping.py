"""Where a generated body ends: the first non-empty line indented no deeper than the `def`.

That rule also covers "the next `def`/`class` at the same level". Generators call `truncate_body`
on decoded text as they go (cheaply, on the new tail) and stop once it reports an end.
"""

from __future__ import annotations

import re

from fnbody.errors import FnbodyError

_DEF_RE = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+\w", re.MULTILINE)


def def_indent(prompt: str) -> int:
    """Indent width (columns, tabs as 8) of the last `def` in the prompt: the function being written."""
    matches = list(_DEF_RE.finditer(prompt))
    if not matches:
        raise FnbodyError("prompt has no `def` line: give a function signature and docstring, e.g. 'def f(x):\\n    \"\"\"Doc.\"\"\"\\n'")
    return len(matches[-1].group(1).expandtabs(8))


def _line_indent(line: str) -> int:
    expanded = line.expandtabs(8)
    return len(expanded) - len(expanded.lstrip())


def truncate_body(prompt: str, text: str, stop: tuple[str, ...] = (), indent: int | None = None) -> tuple[str, bool]:
    """Cut generated `text` (which follows `prompt`) at the end of the function.

    Returns `(body, ended)`: `ended` is True when an end was found (a dedented line or a stop
    string), False when the text may still continue. A trailing partial line is kept, since the
    next tokens may complete it; a dedent is judged as soon as a line shows content.
    """
    if indent is None:
        indent = def_indent(prompt)
    cut = len(text)
    ended = False
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut, ended = i, True
    # If the prompt does not end with a newline, the first generated "line" continues the prompt's last line.
    pos = 0
    if not prompt.endswith("\n"):
        nl = text.find("\n")
        if nl < 0:
            return text[:cut], ended
        pos = nl + 1
    while pos < cut:
        nl = text.find("\n", pos)
        line_end = len(text) if nl < 0 else nl
        line = text[pos:line_end]
        # A line with content at or left of the `def` column ends the body, even before its newline.
        if line.strip() and _line_indent(line) <= indent:
            cut, ended = pos, True
            break
        if nl < 0:
            break
        pos = nl + 1
    return text[:cut], ended

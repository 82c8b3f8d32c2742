"""CodeSearchNet-style tokens: code tokens from Python's `tokenize`, docstring tokens from a regex.

`code_tokens` drops comments, layout tokens (NEWLINE, NL, INDENT, DEDENT) and the function's
docstring, as CSN did. `docstring_tokens` tokenizes the docstring's first paragraph with CSN's
own docstring regex, so ingested CSN rows and freshly extracted ones agree.
"""

from __future__ import annotations

import io
import re
import token
import tokenize

# CodeSearchNet's function_parser DOCSTRING_REGEX_TOKENIZER, verbatim.
_DOCSTRING_TOKEN = re.compile(
    r"[^\s,'\"`.():\[\]=*;>{\}+-/\\]+|\\+|\.+|\(\)|{\}|\[\]|\(+|\)+|:+|\[+|\]+|{+|\}+|=+|\*+|;+|>+|\++|-+|/+"
)
# A paragraph ends at a blank line; whitespace-only lines count as blank (CSN split on "\n\n").
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SKIP = {token.NEWLINE, token.NL, token.INDENT, token.DEDENT, token.COMMENT, token.ENDMARKER}
_OPEN, _CLOSE = set("([{"), set(")]}")


def first_paragraph(docstring: str) -> str:
    """The docstring up to its first blank line (CSN's docstring summary)."""
    return _PARAGRAPH_BREAK.split(docstring.strip(), 1)[0]


def docstring_tokens(docstring: str) -> list[str]:
    """CSN docstring tokens of the docstring's first paragraph."""
    return _DOCSTRING_TOKEN.findall(first_paragraph(docstring))


def raw_tokens(source: str) -> list[tokenize.TokenInfo]:
    """All significant tokens of `source` (no comments or layout); raises tokenize.TokenError / SyntaxError."""
    gen = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t for t in gen if t.type not in _SKIP]


def _docstring_span(toks: list[tokenize.TokenInfo]) -> tuple[int, int] | None:
    """Index range of the first def's docstring tokens in `toks`, or None when it has none."""
    i = next((k for k, t in enumerate(toks) if t.type == token.NAME and t.string == "def"), None)
    if i is None:
        return None
    depth = 0
    for k in range(i + 1, len(toks)):
        s = toks[k].string
        if s in _OPEN:
            depth += 1
        elif s in _CLOSE:
            depth -= 1
        elif s == ":" and depth == 0:
            start = k + 1
            end = start
            while end < len(toks) and toks[end].type == token.STRING:
                end += 1
            if end == start:
                return None
            # A string statement only: "doc" followed by a new statement, ';' or the end.
            nxt = toks[end] if end < len(toks) else None
            if nxt is not None and nxt.start[0] == toks[end - 1].end[0] and nxt.string != ";":
                return None  # e.g. "doc".format(x): an expression, not a docstring
            return start, end
    return None


def code_tokens(source: str) -> list[str]:
    """CSN code tokens of a function's source: tokenize output without comments, layout or the docstring."""
    toks = raw_tokens(source)
    span = _docstring_span(toks)
    if span is not None:
        del toks[span[0]:span[1]]
    return [t.string for t in toks]

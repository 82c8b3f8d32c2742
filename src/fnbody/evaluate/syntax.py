"""Syntax validity: does `prompt + completion` parse as Python?"""

from __future__ import annotations

import ast
import warnings
from typing import Sequence

from fnbody import __version__


def syntax_error(source: str) -> str | None:
    """None when `source` parses; otherwise a short description of the first syntax error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. are not syntax errors
            ast.parse(source)
    except SyntaxError as e:
        return f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    except (ValueError, MemoryError, RecursionError) as e:  # null bytes, absurd nesting
        return f"{type(e).__name__}: {e}"
    return None


def syntax_validity(prompts: Sequence[str], completions: Sequence[str]) -> tuple[dict, list[str | None]]:
    """(summary with the valid rate and signature, per-sample error or None) for prompt + completion."""
    errors = [syntax_error(p + c) for p, c in zip(prompts, completions, strict=True)]
    n = len(errors)
    valid = sum(e is None for e in errors)
    rate = valid / n if n else float("nan")
    return {"syntax_valid_rate": rate, "valid": valid, "n": n,
            "signature": f"syntax-valid|parse:ast-py{_py()}|input:prompt+completion|n:{n}|version:fnbody-{__version__}"}, errors


def _py() -> str:
    import sys

    return f"{sys.version_info.major}.{sys.version_info.minor}"

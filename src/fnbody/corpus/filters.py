"""CodeSearchNet's filters, each one named, documented and switchable.

CSN (Husain et al. 2019, section 2.2) removed: functions without documentation; docstrings shorter
than three tokens (first paragraph); functions shorter than three lines; functions whose name
contains "test" and files under test folders; constructors and standard extension ("dunder")
methods. We also drop stubs (bodies that are only `pass`, `...` or `raise NotImplementedError`):
there is nothing to generate from them.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

TEST_DIRS = {"test", "tests", "testing", "unittest", "unittests", "test_suite", "testsuite"}
_TEST_FILE = re.compile(r"^(test_.*|.*_tests?|tests?|conftest)\.py$")
_TEST_NAME = re.compile(r"^test|_test$", re.IGNORECASE)


@dataclass
class FilterConfig:
    """Which filters run, and their thresholds (0 turns a threshold filter off)."""

    drop_tests: bool = field(default=True, metadata={"help": "drop test functions (name starts with 'test' or ends with '_test', or class Test*) and files under test folders"})
    drop_dunder: bool = field(default=True, metadata={"help": "drop __dunder__ methods (constructors, operators, protocol methods)"})
    drop_stubs: bool = field(default=True, metadata={"help": "drop bodies that are only pass, ..., or raise NotImplementedError (after the docstring)"})
    min_code_lines: int = field(default=3, metadata={"help": "drop functions whose source (code field) has fewer lines"})
    min_docstring_tokens: int = field(default=3, metadata={"help": "drop docstrings whose first paragraph has fewer tokens"})

    def to_dict(self) -> dict:
        """Plain dict, for the manifest."""
        return asdict(self)


def is_test_path(path: str) -> bool:
    """True for files in a test folder or named like a test module (test_x.py, x_test.py, conftest.py)."""
    p = PurePosixPath(path.replace("\\", "/"))
    if any(part.lower() in TEST_DIRS for part in p.parts[:-1]):
        return True
    return bool(_TEST_FILE.match(p.name.lower()))


def is_test_function(name: str, class_name: str | None) -> bool:
    """True for test functions: name starts with 'test' or ends with '_test', or a method of a Test* class."""
    return bool(_TEST_NAME.search(name)) or bool(class_name and class_name.startswith("Test"))


def is_dunder(name: str) -> bool:
    """True for __name__ methods."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _is_stub_stmt(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
        return True
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id in ("NotImplementedError", "NotImplemented")
    return False


def is_stub(body_stmts: list[ast.stmt]) -> bool:
    """True when the statements after the docstring are empty or only pass / ... / raise NotImplementedError."""
    return all(_is_stub_stmt(s) for s in body_stmts)


def function_skip_reason(cfg: FilterConfig, name: str, class_name: str | None, code: str, n_doc_tokens: int, body_stmts: list | None) -> str | None:
    """The first filter that drops this function, by name, or None to keep it."""
    if cfg.drop_tests and is_test_function(name, class_name):
        return "test_function"
    if cfg.drop_dunder and is_dunder(name):
        return "dunder"
    if cfg.drop_stubs and body_stmts is not None and is_stub(body_stmts):
        return "stub_body"
    if cfg.min_code_lines and code.count("\n") + 1 < cfg.min_code_lines:
        return "short_code"
    if cfg.min_docstring_tokens and n_doc_tokens < cfg.min_docstring_tokens:
        return "short_docstring"
    return None


# Names a standalone function may use without defining them: builtins, the stdlib modules HumanEval-style
# solutions import at module level, and typing's generic names (signatures annotate with them).
STANDALONE_MODULES = frozenset({"math", "re", "collections", "itertools", "functools", "string", "heapq", "bisect",
                                "operator", "typing", "random", "statistics", "fractions", "decimal", "hashlib"})
STANDALONE_TYPING = frozenset({"List", "Tuple", "Dict", "Set", "Optional", "Union", "Any", "Iterable", "Iterator",
                               "Sequence", "Callable", "Mapping", "FrozenSet", "Type"})
_STANDALONE_FREE = STANDALONE_MODULES | STANDALONE_TYPING | frozenset(dir(builtins))


def is_standalone(code: str, func_name: str) -> bool:
    """True for a module-level function whose code names only builtins, its own arguments, locals, nested
    definitions and imports, the modules in STANDALONE_MODULES and typing's generic names.

    Such functions look like HumanEval's problems: everything they need is in the signature and body.
    Methods (a dotted `func_name`), code that does not parse and anything reading a module global are not.
    """
    if "." in func_name:
        return False
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    defined: set[str] = set()
    loads: set[str] = set()
    for node in ast.walk(tree.body[0]):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    return loads <= defined | _STANDALONE_FREE

"""Functions with docstrings out of Python source: one CSN-style record each.

The file is split into lines once and every function's text is cut from those lines using the
ast node's line/column offsets, so extraction is linear in the file size. (The naive way,
`ast.get_source_segment` per function, re-splits the whole file on every call: quadratic.)

Each record's `prompt + body` equals the function's source with its own indentation removed,
so a method's `def` (or first decorator) starts at column 0.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass
class Function:
    """One function with a docstring, cut out of its file (tokens are added later, after cheap filters)."""

    func_name: str  # qualified: Class.method, outer.inner
    name: str
    class_name: str | None  # the innermost enclosing class, if any
    code: str  # dedented source: prompt + body
    signature: str
    prompt: str
    body: str
    docstring: str
    lineno: int
    body_stmts: list  # ast statements after the docstring, for the stub filter


def decode_source(data: bytes) -> str:
    """Decode Python source bytes: a UTF-8 BOM is dropped, a PEP 263 cookie honoured, newlines normalised.

    Raises UnicodeDecodeError / LookupError / SyntaxError for undecodable bytes or a bad cookie.
    """
    import io
    import tokenize

    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            enc, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            if enc in ("utf-8", "utf-8-sig"):
                raise
            text = data.decode(enc)
    # ast counts only \n, \r\n and \r as line ends; normalise so our line split matches ast's.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _col(line: str, byte_col: int) -> int:
    """Character column of a UTF-8 byte offset within `line` (ast reports byte offsets)."""
    if line.isascii():
        return byte_col
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _strip_indent(line: str, indent: str) -> str:
    if line.startswith(indent):
        return line[len(indent):]
    if not line.strip():
        return line.lstrip(" \t\f")
    return line  # a continuation or string line indented less than the def: kept as written


def _header_end(node: ast.AST) -> tuple[int, int]:
    """(line, byte col) after which the header's colon is the first ':' outside a comment."""
    pos = (node.lineno, node.col_offset)
    a = node.args
    parts = [*a.posonlyargs, *a.args, a.vararg, *a.kwonlyargs, a.kwarg, *a.defaults, *a.kw_defaults, node.returns]
    for p in parts:
        if p is not None and (p.end_lineno, p.end_col_offset) > pos:
            pos = (p.end_lineno, p.end_col_offset)
    return pos


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.value
    return None


def _cut(lines: list[str], node: ast.AST, doc: ast.Constant, qualname: str, class_name: str | None) -> Function | None:
    """Cut one function out of the file's lines; None when its first line is not pure indentation."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    first = lines[start - 1]
    indent = first[: len(first) - len(first.lstrip(" \t\f"))]
    if not (first[len(indent):].startswith("@") or first[len(indent):].startswith(("def", "async"))):
        return None  # e.g. `class A: def f(self): ...` on one line: no clean dedent exists
    end = node.end_lineno
    last = lines[end - 1]
    last_cut = last[: _col(last, node.end_col_offset)]
    src = [_strip_indent(l, indent) + "\n" for l in lines[start - 1 : end - 1]]
    src.append(_strip_indent(last_cut, indent))
    # Offsets within the dedented text: prompt runs through the end of the docstring's line.
    split_at = doc.end_lineno - start + 1
    if doc.end_lineno == end:
        prompt, body = "".join(src), ""
    else:
        prompt, body = "".join(src[:split_at]), "".join(src[split_at:])
    # Signature: up to the header's colon; the colon is the first ':' after the last header part, outside comments.
    hl, hc = _header_end(node)
    tail = lines[hl - 1]
    ccol = _col(tail, hc) - (len(indent) if tail.startswith(indent) else 0)
    signature = None
    li = hl - start
    while li < len(src):
        s = src[li]
        k = ccol if li == hl - start else 0
        while k < len(s):
            ch = s[k]
            if ch == "#":
                break
            if ch == ":":
                signature = "".join(src[:li]) + s[: k + 1]
                break
            k += 1
        if signature is not None:
            break
        li += 1
    if signature is None:
        return None
    return Function(
        func_name=qualname, name=node.name, class_name=class_name,
        code=prompt + body, signature=signature, prompt=prompt, body=body,
        docstring=doc.value.strip(), lineno=start, body_stmts=node.body[1:],
    )


def iter_functions(tree: ast.Module, lines: list[str]) -> Iterator[Function]:
    """Every function or method with a docstring in a parsed module, outermost first."""
    stack: list[tuple[ast.AST, str, str | None]] = [(tree, "", None)]
    while stack:
        parent, prefix, cls = stack.pop()
        for child in _children(parent):
            if isinstance(child, ast.ClassDef):
                stack.append((child, prefix + child.name + ".", child.name))
            elif isinstance(child, _FUNCS):
                qual = prefix + child.name
                doc = _docstring_node(child)
                if doc is not None:
                    fn = _cut(lines, child, doc, qual, cls)
                    if fn is not None:
                        yield fn
                stack.append((child, qual + ".", cls))
            else:
                stack.append((child, prefix, cls))


def _children(node: ast.AST) -> list[ast.AST]:
    """Statement children of a node (bodies of if/try/with/for too), so nested defs are found."""
    out = []
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        val = getattr(node, field, None)
        if isinstance(val, list):
            out.extend(v for v in val if isinstance(v, ast.AST) and not isinstance(v, ast.expr))
    return out


def functions_from_source(text: str, filename: str = "<source>") -> list[Function]:
    """Parse decoded source and return its functions with docstrings; raises SyntaxError/ValueError."""
    tree = ast.parse(text, filename=filename)
    lines = text.split("\n")
    return sorted(iter_functions(tree, lines), key=lambda f: f.lineno)

// A small Python highlighter: turns source text into a DocumentFragment of text nodes and <span>s.
// It never uses innerHTML, so no generated text can become markup. It tolerates text cut anywhere
// (an unterminated string runs to the end), since it re-renders a stream as it grows.
"use strict";

const PY_KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else " +
  "except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield " +
  "match case").split(" "));
const PY_BUILTINS = new Set(("abs all any bin bool bytearray bytes callable chr classmethod dict dir divmod " +
  "enumerate filter float format frozenset getattr hasattr hash hex id input int isinstance issubclass iter len " +
  "list map max min next object oct open ord pow print property range repr reversed round set setattr slice " +
  "sorted staticmethod str sum super tuple type vars zip Exception ValueError TypeError KeyError IndexError " +
  "RuntimeError NotImplementedError StopIteration AttributeError OSError IOError").split(" "));

// Alternatives, in order: comment, string (with prefixes; triple-quoted may span lines), decorator,
// number, identifier, whitespace, any other character.
const PY_TOKEN = new RegExp([
  "(#[^\\n]*)",
  "((?:[rRbBuUfF]{1,2})?(?:\"\"\"[\\s\\S]*?(?:\"\"\"|$)|'''[\\s\\S]*?(?:'''|$)|\"(?:\\\\.|[^\"\\\\\\n])*(?:\"|$)|'(?:\\\\.|[^'\\\\\\n])*(?:'|$)))",
  "(@[A-Za-z_][\\w.]*)",
  "(\\b0[xXoObB][\\da-fA-F_]+\\b|\\b\\d[\\d_]*(?:\\.[\\d_]*)?(?:[eE][+-]?\\d+)?[jJ]?\\b)",
  "([A-Za-z_]\\w*)",
  "(\\s+)",
  "([\\s\\S])",
].join("|"), "g");

/** Split Python source into [className, text] pairs; className is "" for plain text. */
function tokenizePython(src) {
  const out = [];
  let prevWord = "";
  PY_TOKEN.lastIndex = 0;
  let m;
  while ((m = PY_TOKEN.exec(src)) !== null) {
    if (m[0] === "") { PY_TOKEN.lastIndex++; continue; }
    let cls = "";
    if (m[1] !== undefined) cls = "com";
    else if (m[2] !== undefined) cls = /^[rRbBuUfF]*("""|''')/.test(m[2]) && prevWord === ":" ? "doc" : "str";
    else if (m[3] !== undefined) cls = "dec";
    else if (m[4] !== undefined) cls = "num";
    else if (m[5] !== undefined) {
      const w = m[5];
      if (prevWord === "def" || prevWord === "class") cls = "fn";
      else if (w === "self" || w === "cls") cls = "self";
      else if (PY_KEYWORDS.has(w)) cls = "kw";
      else if (PY_BUILTINS.has(w)) cls = "bi";
    } else if (m[7] !== undefined && "+-*/%=<>!&|^~".includes(m[7])) cls = "op";
    if (m[6] === undefined) prevWord = m[5] !== undefined ? m[5] : m[0];
    out.push([cls, m[0]]);
  }
  return out;
}

/** Render Python source into `el` with highlighting (replaces its children). */
function highlightInto(el, src) {
  const frag = document.createDocumentFragment();
  for (const [cls, text] of tokenizePython(src)) {
    if (cls) {
      const span = document.createElement("span");
      span.className = "tok-" + cls;
      span.textContent = text;
      frag.appendChild(span);
    } else {
      frag.appendChild(document.createTextNode(text));
    }
  }
  el.replaceChildren(frag);
}

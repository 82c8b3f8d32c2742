// The fnbody page: stream a completion from /v1/completions (server-sent events) and show similar
// functions from /v1/search. Everything it loads comes from this server; nothing is executed.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, search: false, controller: null, body: "" };

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "meta" + (cls ? " " + cls : "");
}

async function loadInfo() {
  try {
    const res = await fetch("/health");
    const info = await res.json();
    state.model = info.model;
    state.search = Boolean(info.search);
    $("model").textContent = "model: " + info.model + (info.search ? " · search on" : "");
    $("search-toggle").hidden = !state.search;
    // The field follows the server's own limits: its cap as the maximum, its default when 256 is over the cap.
    const field = $("max-tokens");
    if (info.max_tokens_cap) {
      field.max = info.max_tokens_cap;
      if (parseInt(field.value, 10) > info.max_tokens_cap) field.value = info.default_max_tokens || info.max_tokens_cap;
    }
  } catch (err) {
    $("model").textContent = "server not reachable: " + err;
  }
}

/** Parse server-sent events from a fetch body; calls onData(payload string) per `data:` event. */
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let sep;
    while ((sep = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, sep);
      buf = buf.slice(sep).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

function errorMessage(obj, fallback) {
  return (obj && obj.error && obj.error.message) || fallback;
}

async function generate() {
  let prompt = $("prompt").value;
  // Generators expect the prompt to end its last line; a pasted docstring often lacks the newline.
  if (prompt && !prompt.endsWith("\n")) prompt += "\n";
  if (!/^[ \t]*(async[ \t]+)?def[ \t]+\w/m.test(prompt)) {
    setStatus("Give a `def` line (a function signature), optionally with a docstring.", "error");
    return;
  }
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  state.body = "";
  const code = $("output").querySelector("code");
  highlightInto(code, prompt);
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("copy").disabled = true;
  setStatus("writing…", "busy");
  if (state.search && $("use-search").checked) searchSimilar(prompt);
  const request = {
    prompt: prompt,
    stream: true,
    temperature: Number($("temperature").value) || 0,
    max_tokens: Math.max(1, parseInt($("max-tokens").value, 10) || 256),
  };
  if (state.model) request.model = state.model;
  let finish = null;
  try {
    const res = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!res.ok) {
      const obj = await res.json().catch(() => null);
      throw new Error(errorMessage(obj, "HTTP " + res.status));
    }
    await readEvents(res.body, (data) => {
      if (data === "[DONE]") return false;
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(obj.error.message);
      for (const choice of obj.choices) {
        state.body += choice.text;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      highlightInto(code, prompt + state.body);
      return true;
    });
    setStatus("done" + (finish ? " (" + finish + ")" : "") + " · " + state.body.length + " characters", "done");
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped", "done");
    else setStatus("error: " + err.message, "error");
  } finally {
    if (state.controller === controller) state.controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
    $("copy").disabled = state.body === "";
  }
}

/** The docstring of the prompt (what code search was trained on), or the whole prompt. */
function searchQuery(prompt) {
  const m = prompt.match(/("""|''')([\s\S]*?)(\1|$)/);
  const doc = m ? m[2].trim() : "";
  return doc || prompt.trim();
}

async function searchSimilar(prompt) {
  const list = $("similar");
  $("similar-section").hidden = false;
  list.replaceChildren();
  $("similar-status").textContent = "searching…";
  try {
    const res = await fetch("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: searchQuery(prompt), k: 5 }),
    });
    const obj = await res.json();
    if (!res.ok) throw new Error(errorMessage(obj, "HTTP " + res.status));
    $("similar-status").textContent = obj.data.length ? "" : "no similar functions";
    for (const hit of obj.data) {
      const li = document.createElement("li");
      const title = document.createElement("div");
      title.className = "hit-title";
      const name = hit.func_name || hit.name || "";
      const where = [hit.repo, hit.path].filter(Boolean).join("/");
      title.textContent = [name, where].filter(Boolean).join(" — ") || "result";
      if (typeof hit.score === "number") {
        const score = document.createElement("span");
        score.className = "meta";
        score.textContent = " score " + hit.score.toFixed(3);
        title.appendChild(score);
      }
      li.appendChild(title);
      const src = hit.snippet || hit.code || hit.original_string || hit.text || "";
      if (src) {
        const pre = document.createElement("pre");
        pre.className = "code";
        const c = document.createElement("code");
        highlightInto(c, src);
        pre.appendChild(c);
        li.appendChild(pre);
      }
      list.appendChild(li);
    }
  } catch (err) {
    $("similar-status").textContent = "search failed: " + err.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(state.body));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
    if (e.key === "Tab") {  // indent instead of leaving the box: this is a code editor
      e.preventDefault();
      const t = e.target, s = t.selectionStart;
      t.value = t.value.slice(0, s) + "    " + t.value.slice(t.selectionEnd);
      t.selectionStart = t.selectionEnd = s + 4;
    }
  });
});

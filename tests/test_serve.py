"""Server tests: HTTP API, OpenAI client, queueing, timeouts, cancellation, bad input, static files.

The helpers at the top (a deterministic generator, a real uvicorn server on loopback) are shared
with tests/test_serve_browser.py and tests/test_serve_model.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator, Sequence

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig
from fnbody.generate.stopping import def_indent


class ScriptedGenerator:
    """A generator whose body is fixed text, cut by max_new_tokens (characters) and stop strings.

    `delay` slows each streamed character; `gate`, when set, makes every call wait on it first, so
    a test can hold the worker busy. It records what ran so tests can see what was (not) generated.
    """

    def __init__(self, body: str = "    total = a + b\n    return total\n", name: str = "scripted",
                 delay: float = 0.0):
        self.name = name
        self.body = body
        self.delay = delay
        self.gate: threading.Event | None = None
        self.prompts_run: list[str] = []
        self.streams_closed = 0
        self.pieces_streamed = 0
        self.seeds: list[int] = []
        self.configs: list[GenerationConfig] = []

    def _text(self, prompt: str, cfg: GenerationConfig) -> tuple[str, str]:
        def_indent(prompt)
        self.configs.append(cfg)
        # Sampling makes each seed's text differ, as a real sampler would; greedy is always the same.
        text = self.body if cfg.greedy else self.body.replace("return", f"return {cfg.seed % 97} +", 1)
        cut, finish = len(text), "stop"
        for s in cfg.stop:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
        if cut > cfg.max_new_tokens:
            cut, finish = cfg.max_new_tokens, "length"
        return text[:cut], finish

    def _wait(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"

    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        self._wait()
        out = []
        for p in prompts:
            self.prompts_run.append(p)
            comps = []
            for j in range(cfg.n):
                text, finish = self._text(p, GenerationConfig(**{**cfg.__dict__, "seed": cfg.seed + j}))
                comps.append(Completion(text=text, finish_reason=finish, num_tokens=len(text)))
            out.append(comps)
        return out

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        self._wait()
        self.prompts_run.append(prompt)
        self.seeds.append(cfg.seed)
        text, finish = self._text(prompt, cfg)
        try:
            for ch in text:
                if self.delay:
                    time.sleep(self.delay)
                self.pieces_streamed += 1
                yield ch
        finally:
            self.streams_closed += 1
        return Completion(text=text, finish_reason=finish, num_tokens=len(text))

    def count_tokens(self, text: str) -> int:  # characters, as the completions count them
        return len(text)


class ListIndex:
    """A search index over a few records, ranked by shared words (numpy-free but returns a numpy-like score)."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.queries: list[tuple[str, int]] = []

    def query(self, text: str, k: int) -> list[dict]:
        self.queries.append((text, k))
        words = set(text.lower().split())
        scored = sorted(self.records, key=lambda r: -len(words & set(r["docstring"].lower().split())))
        import numpy as np

        return [{"rank": i + 1, "score": np.float32(len(words & set(r["docstring"].lower().split()))), **r}
                for i, r in enumerate(scored[:k])]


@contextlib.contextmanager
def running_server(app, timeout: float = 10.0) -> Iterator[str]:
    """Run `app` under uvicorn on a free 127.0.0.1 port in a thread; yield its base URL; stop it after."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    start = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - start > timeout:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


# ----------------------------------------------------------------------------------------------------
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from fnbody.serve import ServeSettings, create_app  # noqa: E402
from fnbody.serve.app import STATIC_DIR  # noqa: E402

PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
BODY = "    total = a + b\n    return total\n"


@pytest.fixture
def gen() -> ScriptedGenerator:
    return ScriptedGenerator(BODY)


@pytest.fixture
def client(gen):
    with TestClient(create_app(gen)) as c:
        yield c


def sse_payloads(text: str) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded except the final [DONE]."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ----- info endpoints and spec --------------------------------------------------------------------------
def test_health_models_and_openapi(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "scripted" and h["search"] is False and h["queue_depth"] == 0
    assert (h["max_tokens_cap"], h["default_max_tokens"]) == (ServeSettings().max_tokens_cap, ServeSettings().default_max_tokens)
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["scripted"] and models["object"] == "list"
    assert client.get("/v1/models/scripted").json()["id"] == "scripted"
    assert client.get("/v1/models/gpt-4").status_code == 404
    spec = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/search", "/v1/models", "/health"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "stream"} <= set(props)
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


# ----- completions ----------------------------------------------------------------------------------
def test_completion_schema_n_and_prompt_list(client, gen):
    r = client.post("/v1/completions", json={"model": "scripted", "prompt": [PROMPT, PROMPT.replace("add", "plus")],
                                             "n": 2, "temperature": 0.7, "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "scripted" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    # sampling with seeds 5 and 6 for the two samples of each prompt
    assert body["choices"][0]["text"] == BODY.replace("return", "return 5 +", 1)
    assert body["choices"][1]["text"] == BODY.replace("return", "return 6 +", 1)
    assert all(c["finish_reason"] == "stop" for c in body["choices"])
    assert gen.prompts_run == [PROMPT, PROMPT.replace("add", "plus")]


def test_completion_max_tokens_stop_and_echo(client):
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 7}).json()
    assert r["choices"][0] == {"index": 0, "text": BODY[:7], "finish_reason": "length", "logprobs": None}
    r = client.post("/v1/completions", json={"prompt": PROMPT, "stop": "return"}).json()
    assert r["choices"][0]["text"] == "    total = a + b\n    "
    r = client.post("/v1/completions", json={"prompt": PROMPT, "echo": True}).json()
    assert r["choices"][0]["text"] == PROMPT + BODY


def test_stream_matches_non_stream(client):
    r = client.post("/v1/completions", json={"prompt": PROMPT, "stream": True, "max_tokens": 20})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) > 5  # really streamed in pieces, not one blob
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20}).json()["choices"][0]
    assert text == whole["text"] == BODY[:20]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_usage_is_reported_and_streams_can_ask_for_it(client):
    whole = client.post("/v1/completions", json={"prompt": [PROMPT, PROMPT], "max_tokens": 12}).json()
    assert whole["usage"] == {"prompt_tokens": 2 * len(PROMPT), "completion_tokens": 24, "total_tokens": 2 * len(PROMPT) + 24}
    r = client.post("/v1/completions", json={"prompt": [PROMPT, PROMPT], "max_tokens": 12, "stream": True,
                                             "stream_options": {"include_usage": True}})
    events = sse_payloads(r.text)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    assert all("usage" not in e for e in events[:-2])
    plain = sse_payloads(client.post("/v1/completions", json={"prompt": PROMPT, "stream": True}).text)
    assert all(e == "[DONE]" or e["choices"] for e in plain)  # no usage chunk unless asked


def test_neutral_values_of_unsupported_openai_parameters_are_accepted(client):
    # What client libraries send by default; anything else is refused by name (BAD_REQUESTS).
    r = client.post("/v1/completions", json={"prompt": PROMPT, "logprobs": None, "suffix": None, "presence_penalty": 0,
                                             "frequency_penalty": 0.0, "best_of": 1, "logit_bias": {}, "user": "u"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == BODY


def test_stream_n_gives_distinct_indices_and_seeds(client, gen):
    r = client.post("/v1/completions", json={"prompt": PROMPT, "stream": True, "n": 2, "temperature": 1.0, "seed": 3})
    texts: dict[int, str] = {}
    for c in sse_payloads(r.text)[:-1]:
        ch = c["choices"][0]
        texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
    assert texts == {0: BODY.replace("return", "return 3 +", 1), 1: BODY.replace("return", "return 4 +", 1)}
    assert gen.seeds == [3, 4]


# ----- bad input ------------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("malformed JSON", b'{"prompt": "def f(', 400, "malformed JSON"),
    ("not an object", b'["def f():\\n"]', 400, "JSON object"),
    ("prompt wrong type", {"prompt": 5}, 400, "prompt"),
    ("prompt token ids", {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("max_tokens as string", {"prompt": PROMPT, "max_tokens": "5"}, 400, "max_tokens"),
    ("temperature as string", {"prompt": PROMPT, "temperature": "hot"}, 400, "temperature"),
    ("stream as string", {"prompt": PROMPT, "stream": "yes"}, 400, "stream"),
    ("n zero", {"prompt": PROMPT, "n": 0}, 400, "n"),
    ("n over cap", {"prompt": PROMPT, "n": 9}, 400, "n: 9 exceeds"),
    ("max_tokens over cap", {"prompt": PROMPT, "max_tokens": 100000}, 400, "max_tokens: 100000 exceeds"),
    ("negative temperature", {"prompt": PROMPT, "temperature": -1}, 400, "temperature"),
    ("top_p zero", {"prompt": PROMPT, "top_p": 0}, 400, "top_p"),
    ("unsupported logprobs", {"prompt": PROMPT, "logprobs": 3}, 400, "logprobs: not supported"),
    ("unsupported penalty", {"prompt": PROMPT, "presence_penalty": 0.5}, 400, "presence_penalty: not supported"),
    ("unsupported best_of", {"prompt": PROMPT, "best_of": 3}, 400, "best_of: not supported"),
    ("unsupported logit_bias", {"prompt": PROMPT, "logit_bias": {"50256": -100}}, 400, "logit_bias: not supported"),
    ("stream_options without stream", {"prompt": PROMPT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("unknown field", {"prompt": PROMPT, "frobnicate": 1}, 400, "frobnicate"),
    ("seed over 64 bits", {"prompt": PROMPT, "temperature": 1, "seed": 2**64}, 400, "seed"),
    ("negative seed", {"prompt": PROMPT, "temperature": 1, "seed": -1}, 400, "seed"),
    ("lone surrogate", b'{"prompt": "def f():\\n    \\"\\"\\"\\ud800\\"\\"\\"\\n"}', 400, "lone surrogate"),
    ("missing prompt", {"max_tokens": 3}, 400, "prompt"),
    ("no def line", {"prompt": "hello world"}, 400, "no `def` line"),
    ("one bad prompt in a list", {"prompt": [PROMPT, "x = 1\n"]}, 400, "prompt[1]"),
    ("empty prompt list", {"prompt": []}, 400, "at least one prompt"),
    ("too many stops", {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("empty stop", {"prompt": PROMPT, "stop": [""]}, 400, "stop"),
    ("unknown model", {"prompt": PROMPT, "model": "gpt-4"}, 404, "does not exist"),
]


@pytest.mark.parametrize("name,payload,status,needle", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_completion_requests_get_4xx_with_message(client, gen, name, payload, status, needle):
    if isinstance(payload, bytes):
        r = client.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/completions", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert gen.prompts_run == []  # nothing reached the model


def test_require_body_setting_reaches_every_request(gen):
    with TestClient(create_app(gen, settings=ServeSettings(require_body=True))) as c:
        assert c.post("/v1/completions", json={"prompt": PROMPT}).status_code == 200
    assert gen.configs and all(cfg.require_body for cfg in gen.configs)
    with TestClient(create_app(gen)) as c:
        assert c.post("/v1/completions", json={"prompt": PROMPT}).status_code == 200
    assert gen.configs[-1].require_body is False


def test_body_size_limit(gen):
    with TestClient(create_app(gen, settings=ServeSettings(max_body_bytes=1000))) as c:
        big = {"prompt": PROMPT + "#" * 2000}
        r = c.post("/v1/completions", json=big)
        assert r.status_code == 413 and "1000-byte limit" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit must still hold
            yield json.dumps(big).encode()[:600]
            yield json.dumps(big).encode()[600:]

        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/completions", json={"prompt": PROMPT}).status_code == 200
    assert gen.prompts_run == [PROMPT]


def test_unknown_route_and_method(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"] and r.headers["allow"] == "POST"


def test_generated_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"    open({str(marker)!r}, 'w').write('ran')\n    import os; os._exit(3)\n"
    with TestClient(create_app(ScriptedGenerator(evil))) as c:
        for stream in (False, True):
            r = c.post("/v1/completions", json={"prompt": PROMPT, "stream": stream})
            assert r.status_code == 200
            text = "".join(e["choices"][0]["text"] for e in sse_payloads(r.text)[:-1]) if stream else r.json()["choices"][0]["text"]
            assert text == evil
    assert not marker.exists()


# ----- search ---------------------------------------------------------------------------------------
RECORDS = [
    {"func_name": "read_csv", "repo": "a/b", "path": "io.py", "docstring": "read a csv file into rows", "code": "def read_csv(p):\n    pass\n"},
    {"func_name": "mean", "repo": "a/b", "path": "stats.py", "docstring": "average of numbers", "code": "def mean(x):\n    pass\n"},
]


def test_search_endpoint(gen):
    index = ListIndex(RECORDS)
    with TestClient(create_app(gen, index, ServeSettings(max_k=10))) as c:
        assert c.get("/health").json()["search"] is True
        r = c.post("/v1/search", json={"query": "read a csv file", "k": 1})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["func_name"] for d in data] == ["read_csv"] and data[0]["score"] == 4.0  # numpy float made JSON
        assert index.queries == [("read a csv file", 1)]
        assert c.post("/v1/search", json={"query": "x", "k": 11}).status_code == 400
        assert c.post("/v1/search", json={"query": "x", "k": 0}).status_code == 400
        assert c.post("/v1/search", json={"query": "", "k": 1}).status_code == 400
        assert c.post("/v1/search", json={"query": 3}).status_code == 400
        assert len(index.queries) == 1


def test_search_hybrid_weight_reaches_the_index_and_its_errors_are_400(gen):
    class HybridIndex(ListIndex):
        def query(self, text, k, hybrid=None):  # None: the index's own default (SearchIndex.default_hybrid)
            if hybrid and self.bm25 is None:
                raise FnbodyError("index has no BM25 channel; rebuild it with `fnbody search index RUN --corpus DIR --out INDEX --bm25`")
            self.hybrids.append(hybrid)
            return super().query(text, k)

    index = HybridIndex(RECORDS)
    index.bm25, index.hybrids = True, []
    with TestClient(create_app(gen, index, ServeSettings(max_k=10))) as c:
        assert c.post("/v1/search", json={"query": "read a csv file", "k": 1, "hybrid": 0.3}).status_code == 200
        assert c.post("/v1/search", json={"query": "read a csv file", "k": 1}).status_code == 200
        assert c.post("/v1/search", json={"query": "read a csv file", "k": 1, "hybrid": 0}).status_code == 200
        assert index.hybrids == [0.3, None, 0.0]  # omitted: left to the index; 0: dense only, passed on
        assert c.post("/v1/search", json={"query": "x", "hybrid": -1}).status_code == 400
        index.bm25 = None
        r = c.post("/v1/search", json={"query": "x", "hybrid": 0.3})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "hybrid" and "no BM25 channel" in err["message"]
        assert "--bm25" not in err["message"] and index.hybrids == [0.3, None, 0.0]  # refused before the index was asked
        assert c.post("/v1/search", json={"query": "read a csv file", "hybrid": 0}).status_code == 200  # dense only still works


def test_an_unexpected_error_is_a_500_in_the_openai_shape_and_logged_once(gen):
    import logging

    class BrokenIndex(ListIndex):
        def query(self, text, k, **kw):
            raise RuntimeError("index file vanished")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "fnbody.serve.app")]
    with running_server(create_app(gen, BrokenIndex(RECORDS))) as url:
        for lg in loggers:  # after uvicorn's own logging set-up, which replaces its loggers' handlers
            lg.addHandler(handler)
        try:
            r = httpx.post(f"{url}/v1/search", json={"query": "read a csv file", "k": 1}, timeout=10)
            time.sleep(0.3)  # the traceback is logged after the reply is sent
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
    assert r.status_code == 500 and r.json()["error"] == {"message": "internal server error (RuntimeError)", "type": "server_error",
                                                          "param": None, "code": None}
    tracebacks = [x for x in records if x.exc_info]
    assert len(tracebacks) == 1 and "index file vanished" in str(tracebacks[0].exc_info[1])


@pytest.mark.parametrize("body, message", [
    (b'{"prompt": "\xff"}', "could not be decoded as text (JSON in UTF-8 expected): utf-8 invalid start byte at byte offset 12"),
    (b'{"prompt": ', "malformed JSON body"),
])
def test_an_undecodable_body_is_a_400_that_says_why(client, gen, body, message):
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]["message"] and gen.prompts_run == []


def test_search_without_index_is_404(client):
    r = client.post("/v1/search", json={"query": "x", "k": 1})
    assert r.status_code == 404 and "--search" in r.json()["error"]["message"]


# ----- static files ---------------------------------------------------------------------------------
def test_page_and_static_files_are_local_and_safe(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="prompt"' in r.text and 'id="generate"' in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for name in ("app.js", "highlight.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # Fully offline: nothing in the page refers to another host.
    for p in STATIC_DIR.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", p.read_text()), p.name


@pytest.fixture(scope="module")
def live_url():
    with running_server(create_app(ScriptedGenerator(BODY))) as url:
        yield url


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET `path` byte for byte (http.client sends it unnormalised, unlike browsers and httpx)."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2fcommands%2fserve.py", "/static//etc/passwd",
                                  "/static/..\\app.py", "/static/", "/static/./app.js", "/../../etc/passwd",
                                  "/static/%252e%252e%252fapp.py"])
def test_static_path_traversal_is_refused(live_url, path):
    status, body = raw_get(live_url, path)
    assert status in (400, 404), (path, status)
    assert b"def create_app" not in body and b"root:" not in body and b"import" not in body


def test_static_served_over_the_wire(live_url):
    status, body = raw_get(live_url, "/static/highlight.js")
    assert status == 200 and b"function tokenizePython" in body


# ----- concurrency: queue, 429, timeouts, cancellation (real server, real sockets) --------------------
def wait_until(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_full_queue_answers_429_and_queued_work_still_runs():
    gen = ScriptedGenerator(BODY)
    gen.gate = threading.Event()
    app = create_app(gen, settings=ServeSettings(queue_size=1))
    results: dict[str, int] = {}
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as c:
        def post(key):
            results[key] = c.post("/v1/completions", json={"prompt": PROMPT}).status_code

        t1 = threading.Thread(target=post, args=("running",))
        t1.start()
        assert wait_until(lambda: c.get("/health").json()["busy"])  # first request holds the model
        t2 = threading.Thread(target=post, args=("queued",))
        t2.start()
        assert wait_until(lambda: c.get("/health").json()["queue_depth"] == 1)
        r = c.post("/v1/completions", json={"prompt": PROMPT})  # queue full: refused at once
        assert r.status_code == 429 and "queue is full" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        r = c.post("/v1/completions", json={"prompt": PROMPT, "stream": True})
        assert r.status_code == 429  # streams too, before any event is sent
        assert c.get("/health").status_code == 200  # the event loop is not blocked by the model
        gen.gate.set()
        t1.join(10), t2.join(10)
    assert results == {"running": 200, "queued": 200}
    assert len(gen.prompts_run) == 2


def test_timeout_gives_504_and_cancels_the_queued_job():
    gen = ScriptedGenerator(BODY)
    gen.gate = threading.Event()
    app = create_app(gen, settings=ServeSettings(request_timeout_s=0.3))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as c:
        first = threading.Thread(target=lambda: c.post("/v1/completions", json={"prompt": PROMPT}))
        first.start()
        assert wait_until(lambda: c.get("/health").json()["busy"])
        t0 = time.monotonic()
        r = c.post("/v1/completions", json={"prompt": "def late():\n"})
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 2
        r = c.post("/v1/completions", json={"prompt": "def late_stream():\n", "stream": True})
        assert r.status_code == 200
        events = sse_payloads(r.text)
        assert "timeout" in events[-1]["error"]["message"]  # a stream that timed out says so, no [DONE]
        gen.gate.set()
        first.join(10)
        assert wait_until(lambda: c.get("/health").json()["queue_depth"] == 0 and not c.get("/health").json()["busy"])
    # The timed-out requests were cancelled while queued: the model never ran them.
    assert gen.prompts_run == [PROMPT]


def test_client_disconnect_stops_streaming_generation():
    gen = ScriptedGenerator("    x = 1\n" * 200, delay=0.005)  # 2000 characters, ~10 s if run to the end
    with running_server(create_app(gen)) as url:
        with httpx.Client(base_url=url, timeout=10) as c:
            with c.stream("POST", "/v1/completions", json={"prompt": PROMPT, "stream": True, "max_tokens": 1024}) as r:
                got = 0
                for line in r.iter_lines():
                    got += line.startswith("data: ")
                    if got >= 5:
                        break  # leave mid-stream: the response is closed, the socket dropped
            assert wait_until(lambda: gen.streams_closed == 1, 5), "generation was not stopped"
            stopped_at = gen.pieces_streamed
            time.sleep(0.2)
            assert gen.pieces_streamed == stopped_at < 1024  # and it stays stopped
            assert c.get("/health").json()["busy"] is False


def test_client_disconnect_cancels_a_queued_request():
    gen = ScriptedGenerator(BODY)
    gen.gate = threading.Event()
    with running_server(create_app(gen)) as url, httpx.Client(base_url=url, timeout=10) as c:
        first = threading.Thread(target=lambda: c.post("/v1/completions", json={"prompt": PROMPT}))
        first.start()
        assert wait_until(lambda: c.get("/health").json()["busy"])
        for stream in (False, True):
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                httpx.post(f"{url}/v1/completions", json={"prompt": f"def gone_{stream}():\n", "stream": stream}, timeout=0.3)
        time.sleep(0.3)
        gen.gate.set()
        first.join(10)
        assert wait_until(lambda: c.get("/health").json()["queue_depth"] == 0 and not c.get("/health").json()["busy"])
    assert gen.prompts_run == [PROMPT]


# ----- the openai client ----------------------------------------------------------------------------
def test_openai_client_against_the_server():
    openai = pytest.importorskip("openai")
    gen = ScriptedGenerator(BODY)
    with running_server(create_app(gen)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        assert [m.id for m in client.models.list()] == ["scripted"]
        out = client.completions.create(model="scripted", prompt=PROMPT, max_tokens=64, temperature=0)
        assert out.choices[0].text == BODY and out.choices[0].finish_reason == "stop"
        pieces = [ch.choices[0].text for ch in client.completions.create(model="scripted", prompt=PROMPT, stream=True)]
        assert "".join(pieces) == BODY and len(pieces) > 1
        out = client.completions.create(model="scripted", prompt=PROMPT, n=2, temperature=0.5, seed=1, stop=["total"])
        assert [c.text for c in out.choices] == ["    ", "    "]
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.completions.create(model="gpt-4", prompt=PROMPT)
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model="scripted", prompt=PROMPT, max_tokens=10**6)


# ----- the command line ------------------------------------------------------------------------------
def test_serve_command_defaults_to_localhost_and_checks_its_run(tmp_path, capsys):
    from fnbody.cli import build_parser, main
    from fnbody.commands.serve import is_loopback

    args = build_parser().parse_args(["serve", str(tmp_path)])
    assert (args.host, args.port, args.search) == ("127.0.0.1", 8000, None)
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.4", "example.com")] == \
        [True, True, True, False, False, False]
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:  # a taken port is said before the run is even looked at (a model load takes seconds)
        assert main(["serve", str(tmp_path / "missing"), "--port", str(port)]) == 2
        assert f"--port {port}: cannot listen there" in capsys.readouterr().err
    finally:
        busy.close()
    assert main(["serve", str(tmp_path / "missing"), "--port", str(port)]) == 2  # no run there: a one-line error, no traceback
    err = capsys.readouterr().err
    assert err.startswith("fnbody: error:") and "missing" in err
    assert main(["serve", str(tmp_path / "missing"), "--port", str(port), "--checked", "2", "--checked-temperature", "0"]) == 2
    assert "--checked-temperature" in capsys.readouterr().err  # augment flags too, before the model


def test_worker_runs_in_order_and_skips_cancelled_jobs():
    import asyncio

    from fnbody.serve.worker import Cancelled, QueueFull, Worker

    async def scenario():
        w = Worker("t", maxsize=2)
        gate, ran = threading.Event(), []
        first = w.submit(lambda job: (gate.wait(5), ran.append(1)))
        assert wait_until(lambda: w.busy, 2)
        second = w.submit(lambda job: ran.append(2))
        third = w.submit(lambda job: ran.append(3) or "three")
        with pytest.raises(QueueFull):
            w.submit(lambda job: ran.append(4))
        second.cancel()
        gate.set()
        assert await third.result == "three"
        await first.result
        with pytest.raises(Cancelled):
            await second.result
        w.close()
        return ran

    assert asyncio.run(scenario()) == [1, 3]


def test_settings_refuse_a_timeout_that_is_not_a_finite_positive_number():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FnbodyError, match="request_timeout_s must be a finite number > 0"):
            ServeSettings(request_timeout_s=bad)


def test_a_stalled_request_body_gets_408_instead_of_holding_the_connection(gen):
    import urllib.parse

    with running_server(create_app(gen, settings=ServeSettings(request_timeout_s=1.0))) as url:
        u = urllib.parse.urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\": ")  # 11 of the 100 bytes promised, then silence
            start = time.monotonic()
            reply = b""
            while b"body_timeout" not in reply:  # headers and body may come in separate segments
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply
            assert time.monotonic() - start < 5
        assert httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT}).status_code == 200  # still serving

"""The HTTP server: OpenAI-compatible completions, code search, a model list, health, and the web page.

`create_app(generator, search_index, settings)` builds a FastAPI app around one already-loaded
generator. Generation runs on one worker thread fed by a bounded queue (`fnbody.serve.worker`);
the event loop only validates, queues, waits and writes. Generated code is treated as text:
nothing here (or in the page) ever executes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Protocol

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fnbody.errors import FnbodyError
from fnbody.generate.base import MAX_SEED, Completion, GenerationConfig, Generator
from fnbody.generate.prompts import prompt_problem
from fnbody.serve.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
    Usage,
)
from fnbody.serve.worker import Cancelled, Job, QueueFull, Worker

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# The page loads only its own files: no CDN, no inline script, nothing fetched from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


class SearchIndex(Protocol):
    """What the server needs from a code-search index."""

    def query(self, text: str, k: int) -> list[dict]:
        """The `k` entries most similar to `text`, best first, as JSON-able dicts (`hybrid=w` keyword: dense + BM25 fusion)."""
        ...


@dataclass
class ServeSettings:
    """Limits and defaults of the server."""

    max_tokens_cap: int = field(default=1024, metadata={"help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when a request gives none"})
    max_n: int = field(default=8, metadata={"help": "largest n"})
    max_prompts: int = field(default=16, metadata={"help": "largest number of prompts in one request"})
    max_stop: int = field(default=4, metadata={"help": "most stop strings (OpenAI allows 4)"})
    max_k: int = field(default=50, metadata={"help": "largest k for /v1/search"})
    max_body_bytes: int = field(default=64 * 1024, metadata={"help": "request body size limit (413 above it)"})
    queue_size: int = field(default=32, metadata={"help": "requests waiting for the model before 429"})
    search_queue_size: int = field(default=32, metadata={"help": "search requests waiting before 429"})
    request_timeout_s: float = field(default=120.0, metadata={"help": "wall-clock limit per request, queue wait included"})
    require_body: bool = field(default=False, metadata={"help": "every completion begins a body line before it may end (GenerationConfig.require_body)"})

    def __post_init__(self) -> None:
        for name in ("max_tokens_cap", "default_max_tokens", "max_n", "max_prompts", "max_k", "max_body_bytes",
                     "queue_size", "search_queue_size"):
            if getattr(self, name) < 1:
                raise FnbodyError(f"serve setting {name} must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise FnbodyError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_cap ({self.max_tokens_cap})")
        if not self.request_timeout_s > 0 or self.request_timeout_s == float("inf"):  # NaN fails `> 0` too
            raise FnbodyError(f"request_timeout_s must be a finite number > 0, got {self.request_timeout_s}")


class APIError(Exception):
    """An error answered as an OpenAI-style `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent.

    The body is read (up to the limit) before the app sees it and then replayed, so an oversized
    chunked body is caught here rather than half-way through JSON parsing. A client that stops sending
    before its body is complete gets 408 after `read_timeout_s`, instead of holding the connection forever.
    """

    def __init__(self, app, max_bytes: int, read_timeout_s: float = 30.0):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body exceeds the {self.max_bytes}-byte limit", code="body_too_large")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _error_response(APIError(400, "invalid Content-Length header"))(scope, receive, send)
                if declared > self.max_bytes:
                    return await _error_response(too_big)(scope, receive, send)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout_s)
            except asyncio.TimeoutError:
                return await _error_response(APIError(408, f"request body not received within {self.read_timeout_s:g} s",
                                                      code="body_timeout"))(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _error_response(too_big)(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the client's disconnect, as usual

        await self.app(scope, replay, send)


class SSEResponse(StreamingResponse):
    """A streaming response that always watches for the client leaving while it streams.

    Starlette skips its disconnect listener under ASGI spec 2.4 servers and would then notice a
    departed client only at the next write; a queued or slow generation would keep the model
    busy for nobody. Cancelling the stream runs its `finally`, which cancels the job.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream_then_stop() -> None:
                await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream_then_stop)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _plain(value: Any) -> Any:
    """Make search results JSON-able (numpy scalars, paths)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _stream_finish(it_return: Any, pieces: int, max_tokens: int) -> str:
    # A stream may `return` its Completion (a generator's StopIteration value); otherwise a stream
    # that yielded max_tokens pieces (one per token at most) ran out of length.
    if isinstance(it_return, Completion):
        return it_return.finish_reason
    return "length" if pieces >= max_tokens else "stop"


def create_app(generator: Generator, search_index: SearchIndex | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """Build the server app around one loaded generator (and optionally a search index)."""
    settings = settings or ServeSettings()
    model_id = generator.name
    created = int(time.time())
    static = {p.name: p.read_bytes() for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}
    count_tokens = getattr(generator, "count_tokens", None)  # optional: lets responses report prompt usage

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.gen_worker = Worker("generation", settings.queue_size)
        app.state.search_worker = Worker("search", settings.search_queue_size) if search_index is not None else None
        try:
            yield
        finally:
            app.state.gen_worker.close()
            if app.state.search_worker is not None:
                app.state.search_worker.close()

    app = FastAPI(
        title="fnbody",
        version=__import__("fnbody").__version__,
        description="Write the body of a Python function from its signature and docstring. "
                    "OpenAI-compatible completions, code search, and a web page at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the spec itself is at /openapi.json
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout_s=min(30.0, settings.request_timeout_s))
    error_responses = {s: {"model": ErrorResponse} for s in (400, 404, 413, 429, 504)}

    # ----- errors: always the OpenAI shape, always a message ---------------------------------------
    @app.exception_handler(APIError)
    async def on_api_error(_req: Request, e: APIError):
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_req: Request, e: RequestValidationError):
        parts, param = [], None
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            if err.get("type") == "json_invalid":
                return _error_response(APIError(400, f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}"))
            if err.get("type") == "model_attributes_type" or (not loc and err.get("type") == "dict_type"):
                return _error_response(APIError(400, "request body must be a JSON object"))
            name = ".".join(loc) or "body"
            param = param or name
            parts.append(f"{name}: {err.get('msg')}")
        return _error_response(APIError(400, "; ".join(parts) or "invalid request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_req: Request, e: StarletteHTTPException):
        if isinstance(e.__cause__, UnicodeDecodeError):  # FastAPI's "There was an error parsing the body" says no more
            bad = e.__cause__
            return _error_response(APIError(400, f"request body could not be decoded as text (JSON in UTF-8 expected): "
                                                 f"{bad.encoding} {bad.reason} at byte offset {bad.start}"))
        return _error_response(APIError(e.status_code, str(e.detail), type_="not_found_error" if e.status_code == 404 else "invalid_request_error",
                                        headers=getattr(e, "headers", None)))  # 405 keeps its Allow header

    @app.exception_handler(Exception)
    async def on_unexpected(_req: Request, e: Exception):
        # Not logged here: Starlette re-raises after this reply is sent and uvicorn logs the traceback once.
        return _error_response(APIError(500, f"internal server error ({type(e).__name__})", type_="server_error"))

    # ----- info -----------------------------------------------------------------------------------
    @app.get("/health")
    async def health(request: Request) -> dict:
        """Liveness and load: the model, queue depth, whether search is on."""
        w: Worker = request.app.state.gen_worker
        return {"status": "ok", "model": model_id, "busy": w.busy, "queue_depth": w.depth,
                "queue_size": w.maxsize, "search": search_index is not None,
                "max_tokens_cap": settings.max_tokens_cap, "default_max_tokens": settings.default_max_tokens}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        """The one model this server serves."""
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=error_responses)
    async def get_model(model: str) -> ModelCard:
        """One model's card (404 for any other id)."""
        _check_model(model)
        return ModelCard(id=model_id, created=created)

    def _check_model(model: str | None) -> None:
        if model is not None and model != model_id:
            raise APIError(404, f"model {model!r} does not exist; this server serves {model_id!r} (see GET /v1/models)",
                           param="model", code="model_not_found")

    # ----- completions ----------------------------------------------------------------------------
    def _validate(req: CompletionRequest) -> tuple[list[str], GenerationConfig]:
        _check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: give at least one prompt", param="prompt")
        if len(prompts) > settings.max_prompts:
            raise APIError(400, f"prompt: at most {settings.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
        for i, p in enumerate(prompts):
            where = "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]"
            why = prompt_problem(p)  # no `def` line, or a lone surrogate no tokenizer takes
            if why:
                raise APIError(400, f"{where}: {why}", param="prompt")
        unsupported = {"logprobs": req.logprobs is not None, "suffix": req.suffix is not None,
                       "presence_penalty": req.presence_penalty not in (None, 0), "frequency_penalty": req.frequency_penalty not in (None, 0),
                       "best_of": req.best_of not in (None, req.n), "logit_bias": bool(req.logit_bias)}
        for name, used in unsupported.items():
            if used:
                raise APIError(400, f"{name}: not supported by this server (only its neutral value is accepted)", param=name)
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options: only with stream=true", param="stream_options")
        max_tokens = req.max_tokens if req.max_tokens is not None else settings.default_max_tokens
        if max_tokens > settings.max_tokens_cap:
            raise APIError(400, f"max_tokens: {max_tokens} exceeds this server's cap of {settings.max_tokens_cap}", param="max_tokens")
        if req.n > settings.max_n:
            raise APIError(400, f"n: {req.n} exceeds this server's cap of {settings.max_n}", param="n")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > settings.max_stop:
            raise APIError(400, f"stop: at most {settings.max_stop} stop strings, got {len(stop)}", param="stop")
        if any(not s for s in stop):
            raise APIError(400, "stop: stop strings must be non-empty", param="stop")
        seed = req.seed if req.seed is not None else (secrets.randbelow(2**31) if req.temperature > 0 else 0)
        cfg = GenerationConfig(n=req.n, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                               max_new_tokens=max_tokens, batch_size=req.n, seed=seed, stop=tuple(stop), require_body=settings.require_body)
        return prompts, cfg

    def _submit(worker: Worker, fn) -> Job:
        try:
            return worker.submit(fn)
        except QueueFull as e:
            raise APIError(429, str(e), type_="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None

    async def _wait_for_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**error_responses, 200: {
        "content": {"text/event-stream": {"schema": {"type": "string", "description": "with stream=true: `data: {chunk}` events, then `data: [DONE]`"}}}}})
    async def completions(req: CompletionRequest, request: Request):
        """Complete function bodies (OpenAI completions; `stream: true` gives server-sent events)."""
        prompts, cfg = _validate(req)
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        deadline = time.monotonic() + settings.request_timeout_s
        if req.stream:
            return _stream_completions(request.app.state.gen_worker, req, prompts, cfg, cid, now, deadline)

        def run(job: Job) -> list[list[Completion]]:
            out = []
            for p in prompts:  # one call per prompt, so a cancelled request stops between prompts
                if job.cancelled:
                    raise Cancelled("cancelled")
                out.append(generator.generate([p], cfg)[0])
            return out

        job = _submit(request.app.state.gen_worker, run)
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({job.result, gone}, timeout=settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.result not in done:
            job.cancel()
            if gone in done:
                return Response(status_code=499)  # the client left; nobody reads this
            raise APIError(504, f"generation took longer than this server's {settings.request_timeout_s:g} s request timeout",
                           type_="timeout_error", code="timeout")
        try:
            results = job.result.result()
        except FnbodyError as e:
            raise APIError(400, str(e)) from None
        choices, completion_tokens = [], 0
        for i, (p, comps) in enumerate(zip(prompts, results)):
            for j, c in enumerate(comps):
                choices.append(CompletionChoice(index=i * cfg.n + j, text=(p if req.echo else "") + c.text,
                                                finish_reason=c.finish_reason))
                completion_tokens += c.num_tokens
        usage = None
        if count_tokens is not None:
            prompt_tokens = sum(count_tokens(p) for p in prompts)
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)
        return CompletionResponse(id=cid, created=now, model=model_id, choices=choices, usage=usage)

    def _stream_completions(worker: Worker, req: CompletionRequest, prompts: list[str], cfg: GenerationConfig,
                            cid: str, now: int, deadline: float) -> SSEResponse:
        one = replace(cfg, n=1, batch_size=1)

        usage = bool(req.stream_options and req.stream_options.include_usage and count_tokens is not None)

        def run(job: Job) -> None:
            completion_tokens = 0
            for i, p in enumerate(prompts):
                for j in range(cfg.n):
                    index = i * cfg.n + j
                    if req.echo:
                        job.emit((index, p, None))
                    # Each of the n samples gets its own seed, or they would all be the same text.
                    it: Iterator[str] = generator.stream(p, replace(one, seed=(cfg.seed + j) % (MAX_SEED + 1)))
                    pieces, returned = 0, None
                    try:
                        while True:
                            if job.cancelled:
                                return
                            try:
                                piece = next(it)
                            except StopIteration as stop:
                                returned = stop.value
                                break
                            pieces += 1
                            if piece:
                                job.emit((index, piece, None))
                    finally:
                        close = getattr(it, "close", None)
                        if close is not None:
                            close()  # stops the model's decoding loop when we left early
                    job.emit((index, "", _stream_finish(returned, pieces, cfg.max_new_tokens)))
                    completion_tokens += returned.num_tokens if isinstance(returned, Completion) else pieces
            if usage:
                prompt_tokens = sum(count_tokens(p) for p in prompts)
                job.emit(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                               total_tokens=prompt_tokens + completion_tokens))

        job = _submit(worker, run)  # a full queue answers 429 before any stream starts
        end = object()
        job.result.add_done_callback(lambda _f: job.items.put_nowait(end))

        def chunk(index: int, text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": now, "model": model_id,
                    "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

        async def events() -> AsyncIterator[str]:
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    try:
                        item = await asyncio.wait_for(job.items.get(), timeout=max(remaining, 0.0))
                    except asyncio.TimeoutError:
                        err = APIError(504, f"generation took longer than this server's {settings.request_timeout_s:g} s request timeout",
                                       type_="timeout_error", code="timeout")
                        yield _sse(err.body())
                        return
                    if item is end:
                        break
                    if isinstance(item, Usage):  # stream_options.include_usage: a last chunk with no choices
                        yield _sse({"id": cid, "object": "text_completion", "created": now, "model": model_id,
                                    "choices": [], "usage": item.model_dump()})
                        continue
                    yield _sse(chunk(*item))
                exc = job.result.exception()
                if exc is not None:
                    err = APIError(400, str(exc)) if isinstance(exc, FnbodyError) else \
                        APIError(500, f"generation failed ({type(exc).__name__})", type_="server_error")
                    if not isinstance(exc, FnbodyError):
                        log.error("stream generation failed", exc_info=exc)
                    yield _sse(err.body())
                    return
                yield _sse("[DONE]")
            finally:
                job.cancel()  # client gone, timed out, or finished: in every case the worker may stop

        return SSEResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ----- search ---------------------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchResponse, responses=error_responses)
    async def search(req: SearchRequest, request: Request) -> SearchResponse:
        """The functions in the index most similar to `query`."""
        if search_index is None:
            raise APIError(404, "this server has no search index; start it with `fnbody serve RUN --search INDEX`",
                           code="search_disabled")
        if req.k > settings.max_k:
            raise APIError(400, f"k: {req.k} exceeds this server's cap of {settings.max_k}", param="k")
        if req.hybrid and getattr(search_index, "bm25", None) is None:  # said here: the index's own error names server paths
            raise APIError(400, "hybrid: this server's index has no BM25 channel; leave hybrid out or send 0 (dense only)",
                           param="hybrid")
        extra = {"hybrid": req.hybrid} if req.hybrid is not None else {}  # none given: the index's own default
        job = _submit(request.app.state.search_worker, lambda job: search_index.query(req.query, req.k, **extra))
        try:
            results = await asyncio.wait_for(asyncio.shield(job.result), timeout=settings.request_timeout_s)
        except asyncio.TimeoutError:
            job.cancel()
            raise APIError(504, f"search took longer than {settings.request_timeout_s:g} s", type_="timeout_error", code="timeout") from None
        except FnbodyError as e:
            raise APIError(400, str(e)) from None
        return SearchResponse(query=req.query, data=[_plain(r) for r in results])

    # ----- the web page ---------------------------------------------------------------------------
    def _static_response(name: str) -> Response:
        # Only files present in the package's static folder at start-up, looked up by exact name:
        # a path with "..", "/" or encoded separators simply is not a key.
        body = static.get(name)
        if body is None:
            raise APIError(404, "no such file", type_="not_found_error")
        return Response(body, media_type=STATIC_TYPES[Path(name).suffix],
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _static_response("index.html")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        return _static_response(name)

    return app

"""Request and response bodies: the OpenAI completions schema (the parts fnbody honours) and search.

Requests are strict: wrong JSON types are rejected rather than coerced ("5" is not an integer),
and unknown fields are refused by name, so a client sending a parameter we would silently ignore
learns it at once instead of getting a different answer than it asked for. OpenAI parameters fnbody
does not implement (`logprobs`, `suffix`, penalties, `best_of`, `logit_bias`) are accepted only at
their neutral values (null, 0, 1, {}), which client libraries send by default; any other value is
refused by name (checked in the app).
Limits that depend on the server's settings (max_tokens cap, n cap) are checked in the app.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fnbody.generate.base import MAX_SEED


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class CompletionRequest(_Strict):
    """POST /v1/completions (OpenAI legacy completions)."""

    model: str | None = Field(default=None, description="model id from GET /v1/models; omitted = the served model")
    prompt: str | list[str] = Field(description="signature + docstring (a `def` line), or a list of them")
    max_tokens: int | None = Field(default=None, ge=1, description="most tokens to generate (characters for a char-RNN)")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy decoding")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int = Field(default=0, ge=0, description="fnbody extension: sample among the k most likely tokens (0 = off)")
    n: int = Field(default=1, ge=1, description="completions per prompt")
    stop: str | list[str] | None = Field(default=None, description="up to 4 extra stop strings")
    stream: bool = Field(default=False, description="stream text as server-sent events ending with `data: [DONE]`")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="sampling seed (temperature > 0); omitted = a fresh one")
    echo: bool = Field(default=False, description="prefix each completion with its prompt")
    user: str | None = Field(default=None, description="accepted for compatibility; unused")
    stream_options: StreamOptions | None = Field(default=None, description="with stream=true: include_usage adds a last chunk "
                                                 "with no choices and the request's token usage")
    # Not implemented: accepted at their neutral values only (client libraries send these by default).
    logprobs: int | None = Field(default=None, description="not supported: null only")
    suffix: str | None = Field(default=None, description="not supported: null only")
    presence_penalty: float | None = Field(default=None, description="not supported: null or 0 only")
    frequency_penalty: float | None = Field(default=None, description="not supported: null or 0 only")
    best_of: int | None = Field(default=None, description="not supported: null, or equal to n")
    logit_bias: dict[str, float] | None = Field(default=None, description="not supported: null or {} only")


class SearchRequest(_Strict):
    """POST /v1/search: the functions most similar to a query."""

    query: str = Field(min_length=1, description="natural-language description or code")
    k: int = Field(default=5, ge=1, description="how many results")
    hybrid: float | None = Field(default=None, ge=0.0, le=10.0, description="weight of BM25 in dense + BM25 fusion (0 = dense only; "
                                 "needs an index built with `fnbody search index --bm25`); omitted: the weight the index recorded "
                                 "(`--hybrid-weight auto`), else dense only")


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    query: str
    data: list[dict[str, Any]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fnbody"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

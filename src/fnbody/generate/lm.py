"""Fast generation for Hugging Face causal LMs: a KV cache, left-padded batches, incremental stopping.

`model.generate` re-checks stopping criteria by decoding the whole sequence at every step and
pays for its general machinery on each token. This loop keeps only what body generation needs:

- prefill with `logits_to_keep=1` (the full-vocabulary logits of every prompt position are never
  needed), then one cached step per token under `torch.inference_mode`;
- incremental detokenisation (only the new tokens are decoded) and an incremental end-of-function
  check on the unfinished tail line, using `fnbody.generate.stopping.truncate_body`'s rule;
- rows that finish are dropped from the batch and from the KV cache, so a batch runs only as long
  as its live rows need, at the cost of its live rows only.

The generator feeds `EOS + prompt`, as the training data puts every function after an EOS.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig
from fnbody.generate.stopping import def_indent, truncate_body

PREFIX_TOKENS = 4  # prompt tokens kept in front of the generated ones so decoding slices keeps spaces right


@dataclass
class _Row:
    """Decoding state of one sequence in a batch."""

    prompt: str
    indent: int
    tokens: list[int]  # a few prompt tokens, then the generated ones
    prefix_offset: int
    read_offset: int
    text: str = ""
    line_start: int | None = 0  # start of the first line not yet known to stay in the body
    cut: int | None = None  # set when the function has ended
    finish_reason: str = ""
    logprob_sum: float = 0.0
    generated: int = 0
    emitted: int = 0  # characters handed out by `stream`
    stop: tuple[str, ...] = field(default_factory=tuple)
    has_code: bool = False  # require_body: the body has a line of code (then nothing is masked any more)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)


def _sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Pick the next token for each row of (B, V) float logits: greedy, or temperature/top-k/top-p sampling."""
    if cfg.greedy:
        return logits.argmax(-1)
    # Shifted so the best token is at 0 before dividing: a tiny temperature then sends the others to -inf (greedy in
    # effect) instead of overflowing every logit to inf and the softmax to NaN.
    logits = (logits - logits.amax(-1, keepdim=True)) / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        drop[:, 0] = False  # also when top_p is below float32's smallest step
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class LMGenerator:
    """A `Generator` over a Hugging Face causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, name: str = "lm", max_context: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        config = model.config
        self.max_context = max_context or getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        ids = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(i for i in ids if i is not None)
        if not self.eos_ids:
            raise FnbodyError(f"{name}: the tokenizer has no end-of-text token")
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.eos_ids[0]
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        # (B, V) float logits and the live rows -> logits: a decoding-time adjustment (retrieval guidance); None = off.
        self.logits_hook: Callable[[torch.Tensor, list[_Row]], torch.Tensor] | None = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust decoder directly: the Python wrapper costs more than the decode itself.
        self._decode = (lambda ids: backend.decode(ids, skip_special_tokens=True)) if backend is not None else (
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----- public API -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], cfg: GenerationConfig, *, ignore_end: bool = False) -> list[list[Completion]]:
        """For each prompt, `cfg.n` completions cut at the end of the function.

        `ignore_end` keeps every row decoding to `max_new_tokens` (still checking for the end, and
        still cutting the text there): benchmarks use it to compare equal amounts of work.
        """
        for i, p in enumerate(prompts):
            try:
                def_indent(p)
            except FnbodyError as e:
                raise FnbodyError(f"prompt {i}: {e}") from None
        jobs = [(pi, j) for pi in range(len(prompts)) for j in range(cfg.n)]
        encoded = self._encode_prompts(list(prompts), cfg)
        # Similar lengths together: less padding per batch.
        jobs.sort(key=lambda job: len(encoded[job[0]]))
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed) if not cfg.greedy else None
        out: list[list[Completion | None]] = [[None] * cfg.n for _ in prompts]
        for s in range(0, len(jobs), cfg.batch_size):
            batch = jobs[s:s + cfg.batch_size]
            rows = [self._new_row(prompts[pi], encoded[pi], cfg) for pi, _ in batch]
            for _ in self._decode_rows(rows, [encoded[pi] for pi, _ in batch], cfg, gen, ignore_end):
                pass
            for (pi, j), row in zip(batch, rows):
                out[pi][j] = self._completion(row)
        return [[c for c in per if c is not None] for per in out]

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """Yield the completion's text as it is decided; the pieces join to `generate`'s text (n=1). Returns (as
        StopIteration's value) the Completion, whose finish_reason says whether the function ended or ran out of length."""
        def_indent(prompt)
        ids = self._encode_prompts([prompt], cfg)[0]
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed) if not cfg.greedy else None
        row = self._new_row(prompt, ids, cfg)
        for _ in self._decode_rows([row], [ids], cfg, gen):
            piece = self._take(row)
            if piece:
                yield piece
        piece = self._take(row)
        if piece:
            yield piece
        return self._completion(row)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` encodes to (the server's usage figures)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- internals ----------------------------------------------------------------------------
    @functools.cached_property
    def _token_texts(self) -> list[str]:
        """Every vocabulary entry's text, for `require_body`'s masks (decoded once per generator)."""
        return [self._decode([i]) for i in range(len(self.tokenizer))]

    @functools.cached_property
    def _indent_masks(self) -> dict[tuple[str, str], torch.Tensor]:
        """`_indent_mask` results per (indent, line): few distinct pairs occur, each costs a pass over the vocabulary."""
        return {}

    def _indent_mask(self, indent: str, line: str) -> torch.Tensor:
        """(V,) True for tokens that may follow `line` (whitespace so far) when the body's first line must open at `indent`.

        Allowed: more of the indentation (`line + text` a prefix of `indent`), or the rest of it followed by code
        (`line + text` = `indent` + a non-blank character ...). Never end-of-text, never a blank or shallower line.
        """
        if (indent, line) in self._indent_masks:
            return self._indent_masks[indent, line]
        banned = torch.ones(len(self._token_texts), dtype=torch.bool)
        for i, text in enumerate(self._token_texts):
            full = line + text
            if full and ((len(full) <= len(indent) and indent.startswith(full)) or
                         (full.startswith(indent) and len(full) > len(indent) and not full[len(indent)].isspace())):
                banned[i] = False
        banned[self.eos_ids] = True
        if bool(banned.all()):
            # The line's whitespace no longer fits the body's indentation (a token such as "\n" + 8 spaces ended a
            # comment line): no token can repair it, so only forbid ending.
            banned = torch.zeros_like(banned)
            banned[self.eos_ids] = True
        self._indent_masks[indent, line] = banned = banned.to(self.device)
        return banned

    def _mask_bodyless(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """`require_body`: until the body has a line of code (comments don't count), a row at a line start may only
        indent to the body's level and begin a line there."""
        for k, row in enumerate(rows):
            if row.done or row.has_code or not row.prompt.endswith("\n"):
                continue
            line = row.text.rsplit("\n", 1)[-1]
            if line.strip():
                continue  # a line is underway
            if any(ln.strip() and not ln.lstrip().startswith("#") for ln in row.text.splitlines()):
                row.has_code = True  # found once; later steps skip the row without rescanning its text
                continue
            logits[k].masked_fill_(self._indent_mask(body_indent(row.prompt), line), float("-inf"))
        return logits

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """The forward argument that takes the KV cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
        params = inspect.signature(self.model.forward).parameters
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
        raise FnbodyError(f"{type(self.model).__name__}.forward takes neither `cache` nor `past_key_values`; cannot decode with a KV cache")

    def _encode_prompts(self, prompts: list[str], cfg: GenerationConfig) -> list[list[int]]:
        """EOS + prompt ids, cut from the left (with a warning) so prompt + max_new_tokens fits the context."""
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        room = self.max_context - min(cfg.max_new_tokens, self.max_context // 2)
        out = []
        for i, ids in enumerate(encoded):
            ids = [self.eos, *ids]
            if len(ids) > room:
                print(f"fnbody: warning: prompt {i} has {len(ids)} tokens; keeping the last {room} to fit the "
                      f"{self.max_context}-token context with max_new_tokens={cfg.max_new_tokens}", file=sys.stderr)
                ids = ids[-room:]
            out.append(ids)
        return out

    def _new_row(self, prompt: str, ids: list[int], cfg: GenerationConfig) -> _Row:
        prefix = ids[-PREFIX_TOKENS:]
        return _Row(prompt=prompt, indent=def_indent(prompt), tokens=list(prefix), prefix_offset=0,
                    read_offset=len(prefix), line_start=0 if prompt.endswith("\n") else None, stop=tuple(cfg.stop))

    def _max_new(self, prompt_len: int, cfg: GenerationConfig) -> int:
        return max(1, min(cfg.max_new_tokens, self.max_context - prompt_len))

    @torch.inference_mode()
    def _decode_rows(self, rows: list[_Row], prompt_ids: list[list[int]], cfg: GenerationConfig, gen, ignore_end: bool = False) -> Iterator[None]:
        """Run the batch to the end, yielding after every step (so `stream` can hand out text)."""
        from transformers import DynamicCache, PretrainedConfig

        device = self.device
        B = len(rows)
        T = max(len(p) for p in prompt_ids)
        input_ids = torch.full((B, T), self.pad, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        for b, p in enumerate(prompt_ids):
            input_ids[b, T - len(p):] = torch.tensor(p)
            attn[b, T - len(p):] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
        max_new = self._max_new(T, cfg)
        # The config tells the cache about sliding-window layers; models without a HF config get a plain cache.
        cache = DynamicCache(config=self.model.config) if isinstance(self.model.config, PretrainedConfig) else DynamicCache()
        live = list(range(B))  # row index of each batch position still decoding
        # Without padding no mask is needed; skipping it spares HF building a 4-D mask every step.
        padded = bool((attn == 0).any())
        kv = {self._cache_kwarg: cache}
        out = self.model(input_ids=input_ids, attention_mask=attn if padded else None, position_ids=pos, **kv,
                         use_cache=True, logits_to_keep=1)
        if cache.get_seq_length() != T:
            # A model that silently drops the cache would decode every token without its context.
            raise FnbodyError(f"{type(self.model).__name__} did not fill the KV cache ({cache.get_seq_length()} of {T} positions); "
                              f"transformers {_transformers_version()} may name the cache argument differently")
        next_pos = pos[:, -1:] + 1  # (B, 1)
        eos = torch.tensor(self.eos_ids, device=device)
        for step in range(max_new):
            logits = out.logits[:, -1, :].float()  # (B_live, V)
            if cfg.require_body:
                logits = self._mask_bodyless(logits, [rows[r] for r in live])
            if self.logits_hook is not None:
                logits = self.logits_hook(logits, [rows[r] for r in live])
            tok = _sample(logits, cfg, gen)  # (B_live,)
            logp = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
            is_eos = torch.isin(tok, eos)
            tok_list, logp_list, eos_list = tok.tolist(), logp.tolist(), is_eos.tolist()
            keep = []
            for k, r in enumerate(live):
                row = rows[r]
                if not row.done:
                    row.generated += 1
                    row.logprob_sum += logp_list[k]
                if row.done:  # only with ignore_end: the text is final, the row keeps the batch shape
                    keep.append(k)
                    continue
                if eos_list[k]:
                    self._finish(row, "stop")
                else:
                    self._push(row, tok_list[k])
                    if not row.done and step == max_new - 1:
                        self._finish(row, "length")
                if not row.done or ignore_end:
                    keep.append(k)
            yield
            if not keep:
                break
            if len(keep) < len(live):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                tok, attn, next_pos = tok[idx], attn[idx], next_pos[idx]
                live = [live[k] for k in keep]
                padded = bool((attn == 0).any())
            attn = torch.cat([attn, attn.new_ones((len(live), 1))], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=attn if padded else None, position_ids=next_pos,
                             **kv, use_cache=True)
            next_pos = next_pos + 1
        for row in rows:
            if not row.done:
                self._finish(row, "length")

    def _push(self, row: _Row, token: int) -> None:
        """Append one token: decode only the new text, then check the unfinished tail for the end."""
        row.tokens.append(token)
        prefix_text = self._decode(row.tokens[row.prefix_offset:row.read_offset])
        new_text = self._decode(row.tokens[row.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return  # an incomplete UTF-8 character: wait for the next token
        delta = new_text[len(prefix_text):]
        row.prefix_offset, row.read_offset = row.read_offset, len(row.tokens)
        before = len(row.text)
        row.text += delta
        self._check_end(row, before)

    def _check_end(self, row: _Row, before: int) -> None:
        text = row.text
        cut = None
        for s in row.stop:
            if s:
                i = text.find(s, max(0, before - len(s) + 1))
                if i >= 0 and (cut is None or i < cut):
                    cut = i
        if row.line_start is None:  # the prompt's last line is still being continued
            nl = text.find("\n")
            if nl >= 0:
                row.line_start = nl + 1
        if row.line_start is not None and row.line_start < len(text):
            tail = text[row.line_start:cut]
            kept, ended = truncate_body("\n", tail, indent=row.indent)
            if ended:
                cut = row.line_start + len(kept)
            else:
                # Lines before the last newline are settled: the next check starts after it.
                row.line_start += tail.rfind("\n") + 1
        if cut is not None:
            row.cut = cut
            self._finish(row, "stop")

    def _finish(self, row: _Row, reason: str) -> None:
        row.finish_reason = reason
        if row.cut is None:
            row.cut = len(row.text)

    def _safe_len(self, row: _Row) -> int:
        """How much of the text can no longer be cut away."""
        if row.done:
            return row.cut
        safe = len(row.text)
        if row.line_start is not None:
            last = row.text.rfind("\n") + 1
            if not row.text[last:].strip():
                safe = min(safe, last)  # a blank-so-far line may still turn out to be a dedent
        for s in row.stop:  # hold back a possible start of a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if row.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return max(safe, row.emitted)

    def _take(self, row: _Row) -> str:
        safe = self._safe_len(row)
        piece = row.text[row.emitted:safe]
        row.emitted = safe
        return piece

    def _completion(self, row: _Row) -> Completion:
        mean = row.logprob_sum / row.generated if row.generated else None
        return Completion(text=row.text[:row.cut], finish_reason=row.finish_reason, mean_logprob=mean, num_tokens=row.generated)


# MLP output projections see activation outliers that per-tensor int8 activations cannot hold
# (SmolLM2-135M: valid NLL 1.08 -> 1.92 with them quantized, 1.19 without); lm_head is tied to the embedding.
INT8_SKIP = ("down_proj", "c_proj", "lm_head")


def body_indent(prompt: str) -> str:
    """The indentation the body of `prompt` (ending at a line end) must open with: its docstring's, else the def's + 4 spaces."""
    lines = [ln for ln in prompt.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    own = last[:len(last) - len(last.lstrip())]
    return own if len(own.expandtabs(8)) > def_indent(prompt) else " " * (def_indent(prompt) + 4)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def quantize_int8(model):
    """CPU inference only: dynamic int8 for the Linear layers that tolerate it (~2x faster at batch 1, small quality cost).

    Llama-style models (nn.Linear) benefit; GPT-2's Conv1D projections are left in fp32.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and not n.endswith(INT8_SKIP)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that this API moves to torchao
        return quantize_dynamic(model, names, dtype=torch.qint8, inplace=False)


def load_generator(run_dir: str | Path, device: str = "auto", checkpoint: str | None = None, dtype: str | None = None) -> LMGenerator:
    """Open an `lm` run folder as a generator: its exported model, or `checkpoint` ("best", "last" or a folder).

    `dtype`: None = fp32 on CPU (exactly plain transformers' numbers), bf16 on CUDA; "bf16", "fp16",
    or "int8" (CPU dynamic quantization, see `quantize_int8`).
    """
    from fnbody.config import read_run_info
    from fnbody.models.transformer import check_tokenizer, load_hf_folder
    from fnbody.train.distributed import resolve_device

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info.get("kind") != "lm":
        raise FnbodyError(f"{run_dir}: run kind is {info.get('kind')!r}, not 'lm'")
    dev = resolve_device(device)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32, None: None}.get(dtype, "bad")
    if torch_dtype == "bad":
        raise FnbodyError(f"dtype {dtype!r}: expected fp32, bf16, fp16 or int8 (CPU only)")
    if dtype == "int8" and dev.type != "cpu":
        raise FnbodyError("dtype int8 (dynamic quantization) runs on CPU only")
    if torch_dtype is None:
        # bf16 halves memory traffic on GPUs; on CPU fp32 is faster at batch 1 (measured, benchmarks/lm.py).
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if checkpoint is None:
        if not (run_dir / "model.safetensors").exists() and not (run_dir / "model.safetensors.index.json").exists():
            raise FnbodyError(f"{run_dir}: no exported model (model.safetensors) yet; training writes one at its first evaluation, "
                              "or load a checkpoint with checkpoint='last'")
        model, tokenizer = load_hf_folder(run_dir, dtype=torch_dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from fnbody.train.checkpoint import load_checkpoint

        path = run_dir / "checkpoints" / checkpoint if checkpoint in ("best", "last") else Path(checkpoint)
        if not path.is_dir():
            raise FnbodyError(f"{path}: checkpoint folder not found")
        try:
            config = AutoConfig.from_pretrained(str(run_dir))
            tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
        except Exception as e:
            raise FnbodyError(f"{run_dir}: cannot read the model config/tokenizer ({type(e).__name__}: {e})") from None
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        load_checkpoint(path, model, None, restore_rng=False)
        model = model.to(torch_dtype)
        check_tokenizer(model, tokenizer, str(run_dir))
    model = model.to(dev).eval()
    if dtype == "int8":
        model = quantize_int8(model)
    return LMGenerator(model, tokenizer, name=f"lm:{run_dir.resolve().name}" + (f"@{dtype}" if dtype else ""))

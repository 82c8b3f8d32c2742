"""The char-RNN as a `Generator`: prompt (signature + docstring) in, function body out.

The model reads the separator (the start of a function in the training text) and the prompt,
then decodes one character at a time for a batch of sequences. A sequence ends when it emits
the separator, when a line with content is indented no deeper than the `def`
(`fnbody.generate.stopping.truncate_body`), at a stop string, or after `max_new_tokens`.
Prompts of different lengths are read one by one (cheap, one call each) and their states are
stacked, so decoding, the expensive part, runs batched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig
from fnbody.generate.stopping import def_indent, truncate_body
from fnbody.models.char_rnn import CharRNN, CharRNNConfig, pick_next
from fnbody.tokens.chars import SEP, SEP_ID, UNK_ID, CharVocab

VOCAB_FILE = "vocab.json"


def _cat_states(states: list) -> object:
    if isinstance(states[0], tuple):
        return tuple(torch.cat([s[i] for s in states], dim=1) for i in range(len(states[0])))
    return torch.cat(states, dim=1)  # (L, B, H)


class CharRNNGenerator:
    """Greedy or sampled decoding from a trained `CharRNN` and its `CharVocab`."""

    def __init__(self, model: CharRNN, vocab: CharVocab, device: str | torch.device = "cpu", name: str = "char-rnn") -> None:
        if len(vocab) != model.cfg.vocab_size:
            raise FnbodyError(f"vocabulary has {len(vocab)} symbols but the model expects {model.cfg.vocab_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.name = name

    # ----- the decoding core: yields the texts after every step ---------------------------------
    @torch.no_grad()
    def _decode(self, prompts: Sequence[str], cfg: GenerationConfig, generator: torch.Generator | None) -> Iterator[tuple[list[str], list[bool], list[list[float]]]]:
        indents = [def_indent(p) for p in prompts]
        # Read each distinct prompt once; repeat its state for its copies (n > 1).
        cache: dict[str, tuple[torch.Tensor, object]] = {}
        logits_rows, states = [], []
        for p in prompts:
            if p not in cache:
                ids = torch.from_numpy(self.vocab.encode(SEP + p)).to(self.device)[None, :]  # (1, T)
                logits, state = self.model.step(ids)
                cache[p] = (logits[:, -1, :], state)  # (1, V)
            logits_rows.append(cache[p][0])
            states.append(cache[p][1])
        logits = torch.cat(logits_rows, dim=0)  # (B, V)
        state = _cat_states(states)
        B = len(prompts)
        texts = [""] * B
        logprobs: list[list[float]] = [[] for _ in range(B)]
        done = [False] * B
        # A line is judged when its first non-blank char arrives; a prompt without a final newline
        # leaves the first generated line as a continuation of its last line.
        line_has_content = [not p.endswith("\n") for p in prompts]
        for _ in range(cfg.max_new_tokens):
            logits = logits.float()
            logits[:, UNK_ID] = float("-inf")  # never write a symbol that means "unseen in training"
            nxt = pick_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)  # (B,)
            lps = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None]).squeeze(1)  # (B,)
            for b, (i, lp) in enumerate(zip(nxt.tolist(), lps.tolist())):
                if done[b]:
                    continue
                if i == SEP_ID:
                    done[b] = True
                    continue
                ch = self.vocab.itos[i]
                texts[b] += ch
                logprobs[b].append(lp)
                if ch == "\n":
                    line_has_content[b] = False
                    check = False
                elif not line_has_content[b] and not ch.isspace():
                    line_has_content[b] = True
                    check = True
                else:
                    check = bool(cfg.stop)
                if check and truncate_body(prompts[b], texts[b], cfg.stop, indents[b])[1]:
                    done[b] = True
            yield texts, done, logprobs
            if all(done):
                return
            logits, state = self.model.step(nxt[:, None], state)
            logits = logits[:, -1, :]  # (B, V)

    def _finish(self, prompt: str, text: str, done: bool, logprobs: list[float], stop: tuple[str, ...]) -> Completion:
        body, ended = truncate_body(prompt, text, stop)
        kept = logprobs[:len(body)] or logprobs[:1]
        return Completion(
            text=body,
            finish_reason="stop" if (done or ended) else "length",
            mean_logprob=sum(kept) / len(kept) if kept else None,
            num_tokens=len(body),
        )

    def _rng(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def generate(self, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[Completion]]:
        """For each prompt, `cfg.n` bodies, decoded `cfg.batch_size` sequences at a time."""
        jobs = [(pi, p) for pi, p in enumerate(prompts) for _ in range(cfg.n)]
        results: list[list[Completion]] = [[] for _ in prompts]
        gen = self._rng(cfg.seed)
        for start in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[start:start + cfg.batch_size]
            chunk_prompts = [p for _, p in chunk]
            texts, done, logprobs = [""] * len(chunk), [False] * len(chunk), [[] for _ in chunk]
            for texts, done, logprobs in self._decode(chunk_prompts, cfg, gen):
                pass
            for b, (pi, p) in enumerate(chunk):
                results[pi].append(self._finish(p, texts[b], done[b], logprobs[b], cfg.stop))
        return results

    def count_tokens(self, text: str) -> int:
        """Characters: the char-RNN's tokens (the server's usage figures)."""
        return len(text)

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """Yield one body in pieces as soon as no later character can cut them; joins to `generate`'s text."""
        hold = max((len(s) for s in cfg.stop), default=1) - 1  # a stop string may start this far back
        emitted = 0
        texts, done = [""], [False]
        for texts, done, _ in self._decode([prompt], cfg, self._rng(cfg.seed)):
            text = texts[0]
            if done[0]:
                break
            # A trailing blank partial line may still turn out to start a dedented line: hold it back.
            safe = text.rfind("\n") + 1
            tail = text[safe:]
            safe = len(text) if tail.strip() or (not prompt.endswith("\n") and "\n" not in text) else safe
            safe = max(emitted, safe - hold)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        body, _ = truncate_body(prompt, texts[0], cfg.stop)
        if len(body) > emitted:
            yield body[emitted:]


def load_generator(run_dir: str | Path, device: str = "auto", checkpoint: str = "best") -> CharRNNGenerator:
    """Open a `fnbody train char-rnn` run folder as a generator (its best checkpoint, else last)."""
    from fnbody.config import from_dict, read_run_info
    from fnbody.train.checkpoint import load_checkpoint
    from fnbody.train.distributed import resolve_device

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info.get("kind") != "char-rnn":
        raise FnbodyError(f"{run_dir}: run kind is {info.get('kind')!r}, not 'char-rnn'")
    model_cfg = info.get("config", {}).get("model")
    if not isinstance(model_cfg, dict):
        raise FnbodyError(f"{run_dir}/fnbody.json: no config.model section")
    vocab = CharVocab.load(run_dir / VOCAB_FILE)
    cfg = from_dict(CharRNNConfig, {**model_cfg, "vocab_size": len(vocab)})
    ckpt_root = run_dir / "checkpoints"
    candidates = [ckpt_root / checkpoint] + ([ckpt_root / "last"] if checkpoint == "best" else [])
    path = next((c for c in candidates if c.is_dir()), None)
    if path is None:
        raise FnbodyError(f"{run_dir}: no checkpoint found (looked for {', '.join(str(c) for c in candidates)}); train first or --resume")
    model = CharRNN(cfg)
    load_checkpoint(path, model, optimizer=None, restore_rng=False)
    return CharRNNGenerator(model, vocab, device=resolve_device(device), name=f"char-rnn:{run_dir.name}")

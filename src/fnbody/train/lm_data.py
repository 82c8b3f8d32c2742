"""Language-model training data: whole functions separated by end-of-text, packed into fixed blocks.

As in the report, each function (prompt + body) is one document and documents are joined with
the tokenizer's EOS. The prompt and the body are tokenised separately, exactly as at generation
time (the generator feeds `EOS + prompt` and the model continues with the body), so training and
generation see the same token boundaries. A parallel mask marks body (and EOS) tokens, so the loss
can be restricted to the body.

Tokenised splits are cached on disk as `.npy` files keyed by the tokenizer, the corpus shards'
content and the settings, so a second run (or every torchrun rank after the first) does not
tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fnbody.errors import FnbodyError

DATA_FORMAT = 1  # bump when the layout of the cached arrays changes
IGNORE = -100  # label value torch's cross_entropy skips


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how text becomes ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += f"|eos={tokenizer.eos_token_id}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_fingerprint(corpus_dir: str | Path, split: str) -> str:
    """A hash of one split's shard files (name, size and content)."""
    from fnbody.corpus.io import split_files
    from fnbody.io import sha256_file

    h = hashlib.sha256()
    for path in split_files(corpus_dir, split):
        h.update(f"{path.name}:{path.stat().st_size}:{sha256_file(path)}\n".encode())
    return h.hexdigest()[:16]


def tokenize_functions(records, tokenizer, desc: str = "tokenize", contexts: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One token stream for all functions, `EOS prompt body EOS prompt body ...`, and its body mask.

    `mask[i]` is 1 when token i is body or the EOS that ends a function: the tokens a generator
    must produce. With `contexts` (one string per record, e.g. retrieved similar functions), each
    prompt becomes `context + prompt`, tokenised as one text exactly as the retrieval-augmented
    generator feeds it; context tokens are never targets of the body mask.
    """
    from fnbody.progress import progress

    eos = tokenizer.eos_token_id
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    chunk = 512
    records = list(records)
    if contexts is not None and len(contexts) != len(records):
        raise FnbodyError(f"{len(contexts)} contexts for {len(records)} functions")
    for start in progress(range(0, len(records), chunk), desc=desc, total=(len(records) + chunk - 1) // chunk, unit="chunk"):
        part = records[start:start + chunk]
        for i, r in enumerate(part):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("body"), str):
                raise FnbodyError(f"record {start + i} ({r.get('func_name', '?')}): missing prompt/body text; is this an fnbody corpus?")
        texts = [(contexts[start + i] if contexts is not None else "") + r["prompt"] for i, r in enumerate(part)]
        # verbose=False: functions longer than the model's context are expected here (they are packed into blocks).
        prompts = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        bodies = tokenizer([r["body"] for r in part], add_special_tokens=False, verbose=False)["input_ids"]
        for p, b in zip(prompts, bodies):
            seq = np.asarray([eos, *p, *b], dtype=np.int32)
            m = np.zeros(len(seq), dtype=np.uint8)
            # The leading EOS ends the previous function, so it is a target; the very first token of
            # the stream never is (labels start at index 1), so marking it too is harmless.
            m[0] = 1
            m[1 + len(p):] = 1
            ids.append(seq)
            masks.append(m)
    if not ids:
        raise FnbodyError("no functions to tokenise")
    # Close the last function with EOS so its end is learnt too.
    ids.append(np.asarray([eos], dtype=np.int32))
    masks.append(np.ones(1, dtype=np.uint8))
    return np.concatenate(ids), np.concatenate(masks)


def load_or_tokenize(corpus_dir: str | Path, split: str, tokenizer, max_samples: int | None, cache_dir: str | Path,
                     context_fn=None, context_key: str = "", standalone_only: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """Tokenised `split` from the cache, or tokenise and cache it; returns (ids, mask, was_cached).

    `standalone_only` keeps only the functions `corpus.filters.is_standalone` accepts (HumanEval-like ones).

    `context_fn(records) -> list[str]` adds a context before each prompt (see `tokenize_functions`);
    `context_key` must name everything that decides those contexts, as it joins the cache key.
    """
    from fnbody.corpus.io import read_split
    from fnbody.io import replace_dir, write_json

    key_parts = {
        "format": DATA_FORMAT, "split": split, "max_samples": max_samples,
        "tokenizer": tokenizer_fingerprint(tokenizer), "corpus": split_fingerprint(corpus_dir, split),
    }
    if context_fn is not None:
        key_parts["context"] = context_key
    if standalone_only:
        key_parts["standalone_only"] = True
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / f"{split}-{key}"
    if (folder / "meta.json").exists():
        try:
            return np.load(folder / "ids.npy", mmap_mode="r"), np.load(folder / "mask.npy", mmap_mode="r"), True
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry: rebuild it
    records = read_split(corpus_dir, split, max_samples)
    if standalone_only:
        from fnbody.corpus.filters import is_standalone

        records = [r for r in records if is_standalone(r["code"], r["func_name"])]
    if not records:
        raise FnbodyError(f"{corpus_dir}: split {split!r} has no functions" + (" that are standalone" if standalone_only else ""))
    contexts = context_fn(records) if context_fn is not None else None
    ids, mask = tokenize_functions(records, tokenizer, desc=f"tokenize {split}", contexts=contexts)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "ids.npy", ids)
    np.save(tmp / "mask.npy", mask)
    write_json(tmp / "meta.json", {**key_parts, "functions": len(records), "tokens": int(len(ids))})
    replace_dir(tmp, folder)
    return ids, mask, False


@dataclass
class PackedBlocks:
    """Fixed-length training blocks cut from one token stream: item i is (input ids, labels), each (block_size,)."""

    ids: np.ndarray
    mask: np.ndarray
    block_size: int
    body_only: bool = False

    def __post_init__(self) -> None:
        if len(self.ids) < 2:
            raise FnbodyError("token stream too short to make a training block")
        # A short stream still gives one (shorter) block, so tiny corpora train.
        self.block_size = min(self.block_size, len(self.ids) - 1)

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        # Consecutive blocks share one boundary token: it is a target here and an input in the next block.
        s = i * self.block_size
        chunk = torch.from_numpy(np.asarray(self.ids[s:s + self.block_size + 1], dtype=np.int64))
        x, y = chunk[:-1], chunk[1:].clone()
        if self.body_only:
            keep = torch.from_numpy(np.asarray(self.mask[s + 1:s + self.block_size + 1], dtype=np.bool_))
            y[~keep] = IGNORE
        return x, y


def collate_blocks(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack blocks into (B, T) inputs and (B, T) labels."""
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (labels == -100 are skipped)."""
    x, y = batch
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, blocks: PackedBlocks, batch_size: int, max_blocks: int = 0, device=None) -> dict:
    """Token-weighted mean loss and perplexity over (the first `max_blocks`) blocks."""
    device = device or next(model.parameters()).device
    n = len(blocks) if not max_blocks else min(max_blocks, len(blocks))
    total, count = 0.0, 0
    for s in range(0, n, batch_size):
        x, y = collate_blocks([blocks[i] for i in range(s, min(n, s + batch_size))])
        x, y = x.to(device), y.to(device)
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
        total += loss.item()
        count += int((y != IGNORE).sum())
    mean = total / max(count, 1)
    return {"valid_loss": mean, "valid_ppl": float(np.exp(min(mean, 50.0))), "valid_tokens": count}

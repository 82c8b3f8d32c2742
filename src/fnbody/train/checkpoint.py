"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a folder holding everything needed to resume exactly: model weights (of the
uncompiled, unwrapped model), optimizer state, step, epoch, position in the epoch, best metric,
and every random-number generator's state. It is written to `NAME.tmp/` and then renamed into
place, so an interrupted save never leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from fnbody.errors import FnbodyError
from fnbody.io import replace_dir, write_json

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP/FSDP wrappers and torch.compile."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    """Every RNG's state, as tensors (torch) and JSON-able values (python, numpy)."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, pstate in opt_state["state"].items():
        for name, value in pstate.items():
            key = f"{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"scalars": scalars, "param_groups": opt_state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict) -> Path:
    """Atomically write a checkpoint folder at `path` (model, optimizer, trainer state, RNG)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(unwrap(model), str(tmp / WEIGHTS))
    rng = rng_state()
    rng_tensors = {f"rng.{k}": v for k, v in rng.items() if isinstance(v, torch.Tensor)}
    opt_meta = None
    opt_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file({**opt_tensors, **rng_tensors}, str(tmp / OPTIMIZER))
    write_json(tmp / STATE, {
        **state,
        "optimizer": opt_meta,
        "rng": {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)},
    })
    replace_dir(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict:
    """Load a checkpoint folder into `model` (and `optimizer`); return the trainer state dict."""
    path = Path(path)
    for name in (WEIGHTS, STATE):
        if not (path / name).exists():
            raise FnbodyError(f"{path}: checkpoint is missing {name}")
    try:
        state = json.loads((path / STATE).read_text())
        missing, unexpected = load_model(unwrap(model), str(path / WEIGHTS), strict=False)
    except (json.JSONDecodeError, OSError, RuntimeError, Exception) as e:  # safetensors raises its own error types
        raise FnbodyError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise FnbodyError(f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    extra = load_file(str(path / OPTIMIZER)) if (path / OPTIMIZER).exists() else {}
    if optimizer is not None and state.get("optimizer") is not None:
        opt_tensors = {k: v for k, v in extra.items() if not k.startswith("rng.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, state["optimizer"]))
    if restore_rng:
        rng = dict(state.get("rng", {}))
        for k, v in extra.items():
            if k.startswith("rng."):
                rng[k[4:]] = v
        if "torch" in rng:
            set_rng_state(rng)
    return state

"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a folder holding everything needed to resume exactly: model weights (of the
uncompiled, unwrapped model), optimizer state, step, epoch, position in the epoch, best metric,
and every random-number generator's state. It is written to `NAME.tmp/` and then renamed into
place, so an interrupted save never leaves a checkpoint that looks complete but is not.

One format for every way of training: a model sharded with FSDP2 is gathered into full tensors
(`full_state_dicts`, collective) and written in exactly the layout a single process writes, so
any checkpoint loads into one process, into DDP, or back into FSDP on any number of ranks.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from fnbody.errors import FnbodyError
from fnbody.io import replace_dir, write_json
from fnbody.train.distributed import is_fsdp

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


def tied_names(model: torch.nn.Module) -> list[list[str]]:
    """Groups of names under which one tensor is registered (tied weights such as GPT-2's wte/lm_head), each sorted."""
    groups: dict[int, list[str]] = {}
    for name, t in itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Every name of each optimizer parameter, in the optimizer's order (the index torch's state_dict uses)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    try:
        return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    except KeyError:
        raise FnbodyError("the optimizer holds a parameter that is not in the model (build the optimizer after sharding)") from None


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Full (unsharded) CPU weights and optimizer state of an FSDP2 model, in the single-process layout.

    Collective: every rank must call it. Rank 0 gets the dicts; the other ranks get empty ones.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=opts)
    if optimizer is None:
        return model_state, None
    by_name = get_optimizer_state_dict(model, optimizer, options=opts)
    if not by_name:
        return model_state, {}
    # DCP keys the state by parameter name; torch (and our file) by position in the optimizer.
    index = {name: i for i, names in enumerate(_param_names(model, optimizer)) for name in names}
    return model_state, {
        "state": {index[name]: v for name, v in by_name["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]],
    }


def _save_weights(model_state: dict[str, torch.Tensor], model: torch.nn.Module, file: Path) -> None:
    # What safetensors' save_model does for a module: keep one name per tied tensor (the first in
    # sorted order) and record the dropped names in the metadata, so both layouts are one format.
    tensors = dict(model_state)
    metadata = {"format": "pt"}
    for group in tied_names(model):
        present = [n for n in group if n in tensors]
        for name in present[1:]:
            metadata[name] = present[0]
            del tensors[name]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file), metadata=metadata)


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict, *,
                    model_state: dict | None = None, optimizer_state: dict | None = None, rng_states: list[dict] | None = None) -> Path:
    """Atomically write a checkpoint folder at `path` (model, optimizer, trainer state, RNG).

    `model_state`/`optimizer_state` (from `full_state_dicts`) stand in for a sharded model's own state;
    `rng_states` are every rank's `rng_state()` (by rank; default: this process's only).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if model_state is not None:
        _save_weights(model_state, unwrap(model), tmp / WEIGHTS)
    else:
        save_model(unwrap(model), str(tmp / WEIGHTS))
    rng_states = rng_states or [rng_state()]
    rng = rng_states[0]
    rng_tensors = {f"rng.{k}": v for k, v in rng.items() if isinstance(v, torch.Tensor)}
    # Other ranks' generators (dropout masks differ per rank), under their own keys; rank 0's keep the old ones.
    for r, other in enumerate(rng_states[1:], start=1):
        rng_tensors.update({f"rng.rank{r}.{k}": v for k, v in other.items() if isinstance(v, torch.Tensor)})
    opt_meta = None
    opt_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state if optimizer_state is not None else optimizer.state_dict())
    save_file({**opt_tensors, **rng_tensors}, str(tmp / OPTIMIZER))
    write_json(tmp / STATE, {
        **state,
        "optimizer": opt_meta,
        "rng": {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)},
        "rng_ranks": {str(r): {k: v for k, v in other.items() if not isinstance(v, torch.Tensor)}
                      for r, other in enumerate(rng_states[1:], start=1)},
    })
    replace_dir(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True,
                    rank: int = 0) -> dict:
    """Load a checkpoint folder into `model` (and `optimizer`); return the trainer state dict.

    With `restore_rng`, the generators become those saved by `rank` (rank 0's if that rank was not saved).
    """
    path = Path(path)
    for name in (WEIGHTS, STATE):
        if not (path / name).exists():
            raise FnbodyError(f"{path}: checkpoint is missing {name}")
    sharded = is_fsdp(unwrap(model))
    try:
        state = json.loads((path / STATE).read_text())
        if sharded:
            missing, unexpected = _load_sharded_weights(unwrap(model), path / WEIGHTS)
        else:
            missing, unexpected = load_model(unwrap(model), str(path / WEIGHTS), strict=False)
    except (json.JSONDecodeError, OSError, RuntimeError, Exception) as e:  # safetensors raises its own error types
        raise FnbodyError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise FnbodyError(f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    extra = load_file(str(path / OPTIMIZER)) if (path / OPTIMIZER).exists() else {}
    if optimizer is not None and state.get("optimizer") is not None:
        opt_tensors = {k: v for k, v in extra.items() if not k.startswith("rng.")}
        opt_state = _unflatten_optimizer(opt_tensors, state["optimizer"])
        if sharded:
            _load_sharded_optimizer(unwrap(model), optimizer, opt_state, path)
        else:
            optimizer.load_state_dict(opt_state)
    if restore_rng:
        saved = str(rank) in state.get("rng_ranks", {})
        rng = dict(state["rng_ranks"][str(rank)] if saved else state.get("rng", {}))
        prefix = f"rng.rank{rank}." if saved else "rng."
        for k, v in extra.items():
            if k.startswith(prefix) and (saved or not k.startswith("rng.rank")):
                rng[k[len(prefix):]] = v
        if "torch" in rng:
            set_rng_state(rng)
    return state


def _load_sharded_weights(model: torch.nn.Module, file: Path) -> tuple[set[str], set[str]]:
    """Load full weights into an FSDP2 model (every rank reads the file and keeps its shard); returns (missing, unexpected)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    tensors = load_file(str(file))
    for group in tied_names(model):  # the file holds one name per tied tensor; the model wants them all
        present = [n for n in group if n in tensors]
        for name in group:
            if present:
                tensors.setdefault(name, tensors[present[0]])
    expected = set(model.state_dict())
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if not (missing or unexpected):
        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True))
    return missing, unexpected


def _load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, opt_state: dict, path: Path) -> None:
    """Load a position-keyed full optimizer state into the optimizer of an FSDP2 model (each rank keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n[0] for n in _param_names(model, optimizer)]
    n_saved = sum(len(g["params"]) for g in opt_state["param_groups"])
    if n_saved != len(names) or len(opt_state["param_groups"]) != len(optimizer.param_groups):
        raise FnbodyError(f"{path}: optimizer state has {n_saved} parameters in {len(opt_state['param_groups'])} groups, "
                          f"the optimizer {len(names)} in {len(optimizer.param_groups)}")
    by_name = {
        "state": {names[int(i)]: v for i, v in opt_state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in opt_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

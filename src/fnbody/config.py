"""Typed dataclass configs: build from dicts/TOML with type checks, `--set a.b=v` overrides, run records.

Each component defines a `@dataclass` config whose fields carry help text in
`field(metadata={"help": ...})`. `from_dict` checks every key and type, so a typo in a TOML preset
or a `--set` override is an error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from fnbody import __version__
from fnbody.errors import FnbodyError
from fnbody.io import write_json

T = TypeVar("T")

RUN_INFO = "fnbody.json"  # in every run folder: kind, version, command line, resolved config


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and for numbers/strings from the command line, convert) `value` against type `tp`."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise FnbodyError(f"config key {key!r}: None is not allowed (type {tp})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FnbodyError(f"config key {key!r}: expected a table, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise FnbodyError(f"config key {key!r}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise FnbodyError(f"config key {key!r}: expected a list, got {value!r}")
        items = [_coerce(v, inner, f"{key}[{i}]") if inner is not Any else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise FnbodyError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise FnbodyError(f"config key {key!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FnbodyError(f"config key {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise FnbodyError(f"config key {key!r}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise FnbodyError(f"config key {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise FnbodyError(f"config key {key!r}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise FnbodyError(f"config key {key!r}: cannot use {value!r} as {tp}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise FnbodyError(f"config {prefix or cls.__name__}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FnbodyError(f"unknown config key(s) {[prefix + u for u in unknown]}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        where = f"config section {prefix.rstrip('.')!r}" if prefix else f"config {cls.__name__}"
        raise FnbodyError(f"{where}: {e}") from None
    return obj


def to_dict(cfg: Any) -> dict:
    """A dataclass config as a plain, JSON-able dict."""
    return dataclasses.asdict(cfg)


def load_toml(path: str | Path) -> dict:
    """Read a TOML file, with an error naming it when it is missing or malformed."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FnbodyError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise FnbodyError(f"{path}: invalid TOML ({e})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value); value is parsed as TOML when it can be."""
    if "=" not in text:
        raise FnbodyError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise FnbodyError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: keep the string; _coerce checks it against the field type
    return key.split("."), value


def apply_overrides(cfg: T, overrides: list[str] | None) -> T:
    """Return a copy of dataclass `cfg` with `--set key=value` overrides applied and type-checked."""
    if not overrides:
        return cfg
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for part in path[:-1]:
            node = _child(node, part, text)
            if not isinstance(node, (dict, list)):
                raise FnbodyError(f"override {text!r}: {part!r} is not a config section")
        last = path[-1]
        if isinstance(node, list):
            _child(node, last, text)
            node[int(last)] = value
        elif last not in node:
            raise FnbodyError(f"override {text!r}: unknown key {'.'.join(path)!r}")
        else:
            node[last] = value
    return from_dict(type(cfg), data)


def _child(node: Any, part: str, text: str) -> Any:
    """Step into a dict by key or a list by index (`lms.0.lr`), naming the override on failure."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise FnbodyError(f"override {text!r}: {part!r} is not an index below {len(node)}")
        return node[int(part)]
    if not isinstance(node, dict) or part not in node:
        raise FnbodyError(f"override {text!r}: unknown key {part!r}")
    return node[part]


def config_hash(obj: Any) -> str:
    """A short stable hash of a config (or any JSON-able object), used for stage caching."""
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_help(cls: type) -> str:
    """One line per field: name, type, default and help text."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def write_run_info(run_dir: str | Path, kind: str, cfg: Any, argv: list[str] | None = None, **extra: Any) -> dict:
    """Write `RUN_INFO` into `run_dir`: what kind of run, fnbody version, command line, resolved config."""
    info = {
        "kind": kind,
        "fnbody_version": __version__,
        "argv": list(sys.argv if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
        **extra,
    }
    write_json(Path(run_dir) / RUN_INFO, info)
    return info


def read_run_info(run_dir: str | Path) -> dict:
    """Read a run folder's `RUN_INFO`, with a clear error when the folder is not an fnbody run."""
    path = Path(run_dir) / RUN_INFO
    if not Path(run_dir).is_dir():
        raise FnbodyError(f"{run_dir}: run folder not found")
    if not path.exists():
        raise FnbodyError(f"{run_dir}: not an fnbody run folder (no {RUN_INFO}); train one with `fnbody train ...`")
    from fnbody.io import read_json

    return read_json(path)


def check_resume_config(run_dir: str | Path, cfg: Any, keys: dict[str, tuple[str, ...] | None], ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run whose saved config differs in a key that shapes its model or data.

    `keys` maps a config section to the keys that must match (None = every key of the section
    except those in `ignore`). Everything else (step caps, learning rate, ...) may change on resume.
    """
    saved = read_run_info(run_dir).get("config", {})
    now = to_dict(cfg)
    for section, names in keys.items():
        # A key the saved run predates had its default value then (a run from before the key existed resumes as it was).
        defaults = {f.name: f.default for f in dataclasses.fields(getattr(cfg, section)) if f.default is not dataclasses.MISSING}
        for k in names if names is not None else [n for n in now[section] if n not in ignore]:
            before, after = saved.get(section, {}).get(k, defaults.get(k)), now[section][k]
            if before != after:
                raise FnbodyError(f"{run_dir}: cannot resume: {section}.{k} was {before!r}, now {after!r}")


def prepare_run_dir(run_dir: str | Path, resume: bool, kind: str) -> bool:
    """Whether `run_dir` holds a checkpoint to resume. Errors, before anything is written, for a folder that is not a
    `kind` run: a file, another kind of run, a folder of other files, a finished run (exported model) without checkpoints,
    or a run with checkpoints when `resume` was not asked for. `resume` with nothing to resume starts a new run, saying so
    (the pipeline resumes every stage it started, including one that died before its first checkpoint)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FnbodyError(f"--out {run_dir}: a file, not a folder")
    has_ckpt = (run_dir / "checkpoints" / "last").exists()
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (run_dir / RUN_INFO).exists():
            raise FnbodyError(f"--out {run_dir}: a folder with other files in it (no {RUN_INFO}); give a new or empty folder for the run")
        found = read_run_info(run_dir).get("kind")
        if found != kind:
            raise FnbodyError(f"--out {run_dir}: a {found!r} run, not a {kind!r} run; choose another --out")
        if not has_ckpt and (run_dir / "model.safetensors").exists():
            raise FnbodyError(f"--out {run_dir}: holds a finished {kind} run (model.safetensors, no checkpoints to resume); "
                              "choose another --out or remove it")
    if has_ckpt and not resume:
        raise FnbodyError(f"{run_dir}: run folder already has checkpoints; continue it with --resume or choose another --out")
    if resume and not has_ckpt:
        print(f"{run_dir}: nothing to resume (no checkpoints/last): starting a new run", file=sys.stderr, flush=True)
    return has_ckpt


def apply_section_flags(cfg: T, flags: dict[str, dict[str, Any]], what: str, max_epochs: int | None = None) -> T:
    """Apply command-line flags to a run config's sections (None = flag not given), then cap train.max_epochs.

    `--max-epochs` is a debug cap: it never raises the epoch count set by `--epochs` or the config.
    """
    try:
        for section, values in flags.items():
            given = {k: v for k, v in values.items() if v is not None}
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **given)})
        if max_epochs is not None:
            train = getattr(cfg, "train")
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(train, max_epochs=min(train.max_epochs, max_epochs)))
    except ValueError as e:
        raise FnbodyError(f"bad {what} flag: {e}") from None
    return cfg

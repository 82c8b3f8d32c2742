"""Typed configs: type checks, unknown keys, overrides (including list items), TOML errors."""

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from fnbody.config import apply_overrides, check_resume_config, config_hash, from_dict, load_toml, read_run_info, write_run_info
from fnbody.errors import FnbodyError


@dataclass
class Inner:
    lr: float = 1e-3
    name: str = "a"


@dataclass
class Outer:
    steps: int = 10
    mode: Literal["fast", "slow"] = "fast"
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    runs: list[Inner] = field(default_factory=lambda: [Inner(), Inner(name="b")])
    limit: int | None = None


def test_from_dict_checks_types_and_keys():
    cfg = from_dict(Outer, {"steps": 5, "inner": {"lr": 1}, "runs": [{"name": "x"}], "limit": None})
    assert cfg.steps == 5 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.runs == [Inner(name="x")]
    with pytest.raises(FnbodyError, match="unknown config key.*'stepz'"):
        from_dict(Outer, {"stepz": 1})
    with pytest.raises(FnbodyError, match="'steps': expected an integer"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(FnbodyError, match="'mode'.*not one of"):
        from_dict(Outer, {"mode": "medium"})
    with pytest.raises(FnbodyError, match="inner.lr"):
        from_dict(Outer, {"inner": {"lr": "x"}})


def test_overrides_are_type_checked():
    cfg = apply_overrides(Outer(), ["steps=7", "inner.lr=0.5", "flag=true", "tags=a,b", "runs.1.name=zz", "mode=slow"])
    assert (cfg.steps, cfg.inner.lr, cfg.flag, cfg.tags, cfg.runs[1].name, cfg.mode) == (7, 0.5, True, ["a", "b"], "zz", "slow")
    with pytest.raises(FnbodyError, match="unknown key"):
        apply_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(FnbodyError, match="expected an integer"):
        apply_overrides(Outer(), ["steps=1.5"])
    with pytest.raises(FnbodyError, match="index below 2"):
        apply_overrides(Outer(), ["runs.5.name=x"])
    with pytest.raises(FnbodyError, match="key=value"):
        apply_overrides(Outer(), ["steps"])
    assert config_hash(Outer()) == config_hash(Outer()) != config_hash(apply_overrides(Outer(), ["steps=11"]))


def test_toml_and_run_info(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('steps = 3\n[inner]\nlr = 0.1\n[[runs]]\nname = "q"\n')
    cfg = from_dict(Outer, load_toml(p))
    assert cfg.steps == 3 and cfg.runs == [Inner(name="q")]
    p.write_text("steps = = 3")
    with pytest.raises(FnbodyError, match="invalid TOML"):
        load_toml(p)
    write_run_info(tmp_path / "run", "test", cfg, argv=["fnbody", "x"])
    info = read_run_info(tmp_path / "run")
    assert info["kind"] == "test" and info["config"]["steps"] == 3 and info["argv"] == ["fnbody", "x"]
    with pytest.raises(FnbodyError, match="not an fnbody run folder"):
        read_run_info(tmp_path)


def test_resume_check_treats_a_key_the_run_predates_as_its_default(tmp_path):
    run = tmp_path / "run"
    write_run_info(run, "test", Outer())
    info = read_run_info(run)
    del info["config"]["inner"]["lr"]  # saved before `lr` existed
    (run / "fnbody.json").write_text(json.dumps(info))
    check_resume_config(run, Outer(), {"inner": ("lr", "name")})  # the default then = the default now: resumes
    with pytest.raises(FnbodyError, match=r"inner.lr was 0.001, now 0.5"):
        check_resume_config(run, Outer(inner=Inner(lr=0.5)), {"inner": ("lr",)})
    with pytest.raises(FnbodyError, match=r"inner.name was 'a', now 'z'"):
        check_resume_config(run, Outer(inner=Inner(name="z")), {"inner": None})



def test_value_errors_name_the_config_section():
    from fnbody.commands.lm import LMRunConfig, _resolve_annotations
    from fnbody.errors import FnbodyError

    _resolve_annotations()  # as the CLI does before building an lm config

    with pytest.raises(FnbodyError, match=r"config section 'data': bleu_samples must be >= 0, got -1"):
        from_dict(LMRunConfig, {"data": {"bleu_samples": -1}})
    with pytest.raises(FnbodyError, match=r"config section 'train': lr must be a finite number > 0"):
        from_dict(LMRunConfig, {"train": {"lr": -1.0}})

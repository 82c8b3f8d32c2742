"""The pipeline's typed configuration; presets live in `configs/*.toml`."""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field
from pathlib import Path

from fnbody.commands.char_rnn import CELLS, check_sweep_grid
from fnbody.config import from_dict, load_toml
from fnbody.errors import FnbodyError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESETS = ("tiny", "demo", "paper")
# Kept in step with fnbody.search.model.ENCODERS + PRETRAINED_ENCODERS (a test checks): importing those pulls in torch.
SEARCH_ENCODERS = ("nbow", "rnn", "cnn", "selfatt", "minilm")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _at_least(obj, minimum: float, *names: str) -> None:
    """Raise ValueError naming the first field of `obj` below `minimum` (or not a finite number)."""
    for n in names:
        v = getattr(obj, n)
        if not (math.isfinite(v) and v >= minimum):
            raise ValueError(f"{n} must be >= {minimum:g}, got {v}")


@dataclass
class CorpusStage:
    """Corpus building (`fnbody corpus build`)."""

    sources: list[str] = field(default_factory=list, metadata={"help": "sources; empty = this interpreter's stdlib + site-packages"})
    max_files: int = field(default=0, metadata={"help": "cap on source files read (0 = all)"})
    jobs: int = field(default=0, metadata={"help": "parallel workers (0 = all cores)"})
    seed: int = field(default=0, metadata={"help": "split seed"})
    extra_train_sources: list[str] = field(default_factory=list, metadata={
        "help": "more sources (e.g. downloaded wheels) added to the train split only, by `corpus build --extend`: "
                "valid and test stay the base's"})

    def __post_init__(self) -> None:
        _at_least(self, 0, "max_files", "jobs")


@dataclass
class SearchStage:
    """Code-search baselines (`fnbody train search`, `fnbody eval search`)."""

    encoders: list[str] = field(default_factory=lambda: ["nbow", "rnn"], metadata={"help": "encoders to train"})
    max_epochs: int = field(default=20, metadata={"help": "epoch cap (never lengthens an encoder's own recipe, e.g. MiniLM's 1 epoch; settings override it)"})
    max_steps: int = field(default=0, metadata={"help": "step cap (0 = none; settings override it)"})
    max_samples: int = field(default=0, metadata={"help": "training functions cap (0 = all)"})
    settings: list[str] = field(default_factory=list, metadata={"help": "extra --set overrides: `key=v` for every encoder, `rnn:key=v` for one"})
    bm25_fusion: bool = field(default=True, metadata={"help": "also score BM25 alone and each encoder fused with BM25 (weight chosen on valid)"})

    def __post_init__(self) -> None:
        bad = [e for e in self.encoders if e not in SEARCH_ENCODERS]
        if bad:
            raise ValueError(f"unknown encoder(s) {bad}; known: {list(SEARCH_ENCODERS)}")
        if len(set(self.encoders)) != len(self.encoders):
            raise ValueError(f"encoders {self.encoders} lists one twice")
        _at_least(self, 0, "max_epochs", "max_steps", "max_samples")


@dataclass
class CharRNNStage:
    """The char-RNN baseline (`fnbody train char-rnn`) and its sweep."""

    cell: str = field(default="lstm", metadata={"help": "lstm, gru or rnn"})
    hidden: int = field(default=128, metadata={"help": "hidden size"})
    layers: int = field(default=2, metadata={"help": "layers"})
    seq_len: int = field(default=50, metadata={"help": "training window (characters)"})
    batch_size: int = field(default=50, metadata={"help": "windows per step"})
    max_epochs: int = field(default=50, metadata={"help": "epoch cap"})
    max_steps: int = field(default=0, metadata={"help": "step cap (0 = none)"})
    max_samples: int = field(default=0, metadata={"help": "training functions cap (0 = all)"})
    sweep: bool = field(default=True, metadata={"help": "run the Table 4.1 sweep"})
    sweep_full: bool = field(default=False, metadata={"help": "sweep at the report's full size"})
    sweep_cells: list[str] = field(default_factory=lambda: ["lstm", "gru", "rnn"], metadata={"help": "cells swept"})
    sweep_lrs: list[float] = field(default_factory=lambda: [0.002, 0.01], metadata={"help": "learning rates swept"})
    sweep_batch_sizes: list[int] = field(default_factory=lambda: [50], metadata={"help": "batch sizes swept"})
    sweep_max_steps: int = field(default=0, metadata={"help": "step cap per sweep setting (0 = the sweep's default)"})
    sweep_bleu_samples: int = field(default=0, metadata={"help": "BLEU prompts per sweep setting (0 = the sweep's default)"})
    settings: list[str] = field(default_factory=list, metadata={"help": "extra --set overrides"})

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {self.cell!r}")
        _at_least(self, 1, "hidden", "layers", "seq_len", "batch_size")
        _at_least(self, 0, "max_epochs", "max_steps", "max_samples", "sweep_max_steps", "sweep_bleu_samples")
        if not self.sweep:
            return
        # the same grid check as `fnbody sweep` (the stage runs that command), in this file's key names
        check_sweep_grid(self.sweep_cells, self.sweep_lrs, self.sweep_batch_sizes, ("sweep_cells", "sweep_lrs", "sweep_batch_sizes"),
                         if_empty="list at least one value, or set sweep = false")


@dataclass
class LMStage:
    """One transformer generator (`fnbody train lm`)."""

    name: str = field(default="gpt2-scratch", metadata={"help": "row name in the report"})
    init: str = field(default="scratch:tiny", metadata={"help": "init spec: smollm2, scratch:tiny|small|gpt2-124m, a folder, a .gguf, a hub name"})
    max_steps: int = field(default=0, metadata={"help": "step cap (0 = none)"})
    max_epochs: int = field(default=1, metadata={"help": "epoch cap"})
    max_samples: int = field(default=0, metadata={"help": "training functions cap (0 = all)"})
    settings: list[str] = field(default_factory=list, metadata={"help": "extra --set overrides"})
    rag: bool = field(default=False, metadata={"help": "fine-tune with retrieved context: each training function's top augment.rag_k "
                                                        "hits from the pipeline's retrieval index (augment.retriever) before its prompt, "
                                                        "with augment's token budget and hybrid weight, so the model learns to use it"})

    def __post_init__(self) -> None:
        # The name is a folder under OUT (lm/NAME, eval/NAME): nothing that could leave it or collide with another.
        if not _SAFE_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if self.name == "char-rnn":
            raise ValueError("name 'char-rnn' is taken by the char-RNN baseline's evaluation")
        if not self.init.strip():
            raise ValueError("init is empty; use smollm2, scratch:tiny|small|gpt2-124m, a folder, a .gguf or a hub name")
        if self.init.startswith("scratch:"):
            from fnbody.models.transformer import SCRATCH_SIZES  # torch-free

            if self.init.removeprefix("scratch:") not in SCRATCH_SIZES:
                raise ValueError(f"init {self.init!r}: scratch sizes are {sorted(SCRATCH_SIZES)}")
        _at_least(self, 0, "max_steps", "max_epochs", "max_samples")


@dataclass
class EvalStage:
    """How every generator is evaluated, identically."""

    bleu_samples: int = field(default=1000, metadata={"help": "test functions scored by BLEU (the report used the first 1000)"})
    humaneval_problems: int = field(default=0, metadata={"help": "HumanEval problems (0 = all 164)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation cap"})
    batch_size: int = field(default=8, metadata={"help": "generation batch"})
    timeout: float = field(default=10.0, metadata={"help": "seconds per HumanEval program"})
    require_body: bool = field(default=False, metadata={"help": "transformers never end before a body line has begun"})

    def __post_init__(self) -> None:
        _at_least(self, 0, "bleu_samples", "humaneval_problems")
        _at_least(self, 1, "max_new_tokens", "batch_size")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a finite number > 0, got {self.timeout}")


@dataclass
class AugmentStage:
    """Beyond the report: retrieval-augmented and execution-checked generation (needs the retriever's search stage)."""

    enabled: bool = field(default=True, metadata={"help": "run the stage (skipped when the retriever is not among search.encoders)"})
    retriever: str = field(default="nbow", metadata={"help": "search encoder (one of search.encoders) whose run indexes the train split for retrieval"})
    generator: str = field(default="", metadata={"help": "lm name to augment (default: the last of `lms`)"})
    rag_k: int = field(default=2, metadata={"help": "functions retrieved per prompt"})
    rag_budget_tokens: int = field(default=0, metadata={"help": "cap on context + prompt tokens (0 = model context minus generation room, at most 1024)"})
    rag_hybrid: float = field(default=0.0, metadata={"help": "> 0: the index also gets BM25 and retrieval ranks by z(dense) + W * z(BM25)"})
    checked_n: int = field(default=8, metadata={"help": "candidates per HumanEval problem (greedy + N-1 samples)"})
    checked_temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the candidates"})
    combined: bool = field(default=False, metadata={"help": "also score retrieval and execution checking together on HumanEval"})
    rerank_k: int = field(default=0, metadata={"help": "> 0: also rank checked_n candidates per BLEU test row by agreement with the bodies "
                                                   "of their top rerank_k retrieved functions, against ranking the same candidates by log-probability"})

    guide_alpha: float = field(default=0.0, metadata={"help": "> 0: also decode the BLEU test rows with retrieval-guided decoding, the "
                                                        "continuations in their top guide_k retrieved bodies mixed in at this weight"})
    guide_k: int = field(default=3, metadata={"help": "neighbours that guide decoding"})

    def __post_init__(self) -> None:
        if not (self.rag_hybrid >= 0 and math.isfinite(self.rag_hybrid)):
            raise ValueError(f"rag_hybrid must be a finite number >= 0, got {self.rag_hybrid}")
        if not 0 <= self.guide_alpha < 1:
            raise ValueError(f"guide_alpha must be in [0, 1) (0 = off), got {self.guide_alpha}")
        if self.guide_k < 1:
            raise ValueError(f"guide_k must be >= 1, got {self.guide_k}")
        if self.rerank_k < 0:
            raise ValueError(f"rerank_k must be >= 0 (0 = off), got {self.rerank_k}")
        _at_least(self, 1, "rag_k", "checked_n")
        _at_least(self, 0, "rag_budget_tokens", "checked_temperature")


@dataclass
class PipelineConfig:
    """Everything `fnbody run` does, stage by stage."""

    name: str = field(default="custom", metadata={"help": "preset name, recorded in the report"})
    seed: int = field(default=0, metadata={"help": "seed for every stage"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    corpus: CorpusStage = field(default_factory=CorpusStage)
    search: SearchStage = field(default_factory=SearchStage)
    char_rnn: CharRNNStage = field(default_factory=CharRNNStage)
    lms: list[LMStage] = field(default_factory=lambda: [LMStage()])
    evaluation: EvalStage = field(default_factory=EvalStage)
    augment: AugmentStage = field(default_factory=AugmentStage)

    def __post_init__(self) -> None:
        names = [lm.name for lm in self.lms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"lms names {dup} are used twice: each names its own run folder and report row")


def load_preset(preset: str) -> PipelineConfig:
    """A preset name (tiny, demo, paper) or a path to a TOML file."""
    path = Path(preset)
    if preset in PRESETS:
        path = PRESET_DIR / f"{preset}.toml"
    elif not path.is_file():
        raise FnbodyError(f"unknown preset {preset!r}: use one of {list(PRESETS)} or a path to a .toml file")
    return from_dict(PipelineConfig, load_toml(path))

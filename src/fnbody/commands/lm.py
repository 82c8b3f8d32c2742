"""`fnbody train lm`: fine-tune a pretrained causal LM (or train GPT-2 from scratch) on the corpus.

The report's best model: GPT-2 small fine-tuned on whole functions separated by end-of-text.
Here the backbone is any init spec (`fnbody.models.transformer`): SmolLM2-135M offline by
default, GPT-2 or any HF checkpoint, or GPT-2 from scratch with a BPE trained on the corpus.

Each evaluation writes valid loss and perplexity and, on a fixed valid subset, generation BLEU
(the report's Figure 2: BLEU during training). The run folder is a Hugging Face model folder:
the best model so far and its tokenizer are exported to its root on every improvement, so
`AutoModelForCausalLM.from_pretrained(RUN)` works; `checkpoints/{best,last}` hold the training
state for `--resume`. Under `torchrun --nproc_per_node N` the same command trains with DDP, or
with FSDP2 sharding under `--set train.parallel=fsdp`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fnbody.errors import FnbodyError

if TYPE_CHECKING:
    from fnbody.train.loop import TrainConfig

KIND = "lm"


def _lm_train_config():
    """AdamW with warm-up and cosine decay, clipped gradients: the usual recipe for fine-tuning a small LM."""
    from fnbody.train.loop import TrainConfig

    return TrainConfig(batch_size=16, max_epochs=1, optimizer="adamw", lr=1e-4, weight_decay=0.1, beta2=0.95,
                       schedule="cosine", warmup_steps=20, min_lr_ratio=0.1, clip_norm=1.0, eval_every=100, log_every=10)


@dataclass
class LMModelConfig:
    """Where the model comes from."""

    init: str = field(default="smollm2", metadata={"help": "smollm2 | scratch:tiny|small|gpt2-124m | HF folder | .gguf file | hub name"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder to use instead of the init's (must match the model)"})
    vocab_size: int = field(default=8192, metadata={"help": "BPE vocabulary size for scratch:* inits"})
    dropout: float = field(default=0.0, metadata={"help": "dropout for scratch:* inits"})


@dataclass
class LMDataConfig:
    """How the corpus becomes training blocks, and what each evaluation measures."""

    block_size: int = field(default=512, metadata={"help": "tokens per training block"})
    body_only_loss: bool = field(default=False, metadata={"help": "train on body tokens only (prompt tokens are context, not targets)"})
    max_samples: int = field(default=0, metadata={"help": "only the first N functions of each split (0 = all)"})
    standalone_only: bool = field(default=False, metadata={"help": "train and validate only on module-level functions that name nothing "
                                                                   "but builtins, their own arguments, locals and imports, common stdlib "
                                                                   "modules and typing names: HumanEval-like functions"})
    eval_blocks: int = field(default=64, metadata={"help": "valid blocks scored for loss/perplexity per evaluation (0 = all)"})
    eval_batch_size: int = field(default=8, metadata={"help": "blocks per evaluation forward pass"})
    bleu_samples: int = field(default=16, metadata={"help": "fixed valid prompts whose generated bodies are scored with BLEU (0 = off)"})
    bleu_max_new_tokens: int = field(default=128, metadata={"help": "token cap per generated body during evaluation"})
    cache_dir: str = field(default="", metadata={"help": "tokenised-data cache (default $FNBODY_CACHE or ~/.cache/fnbody, /lm-data)"})
    rag_index: str = field(default="", metadata={"help": "search index of the train split: put each function's top rag_k retrieved "
                                                         "functions (never itself, never its own repo) before its prompt, as `--rag-index` does at generation"})
    rag_k: int = field(default=2, metadata={"help": "functions retrieved per training function (with rag_index)"})
    rag_budget_tokens: int = field(default=0, metadata={"help": "cap on context + prompt tokens (0 = half of block_size)"})
    rag_hybrid: float = field(default=0.0, metadata={"help": "rank retrieval by z(dense) + W * z(BM25) (an index built with --bm25), "
                                                             "as `--rag-hybrid` does at generation (0 = dense only)"})
    rag_fraction: float = field(default=1.0, metadata={"help": "share of functions given retrieved context (the rest train without, so "
                                                               "one model serves plain and retrieval-augmented generation); a fixed hash picks them"})

    def __post_init__(self) -> None:
        if self.block_size < 2 or self.eval_batch_size < 1:
            raise ValueError("block_size must be >= 2 and eval_batch_size >= 1")
        if self.rag_k < 1 or self.rag_budget_tokens < 0:
            raise ValueError("rag_k must be >= 1 and rag_budget_tokens >= 0")
        if not 0.0 < self.rag_fraction <= 1.0:
            raise ValueError(f"rag_fraction must be in (0, 1], got {self.rag_fraction}")
        if not (self.rag_hybrid >= 0 and math.isfinite(self.rag_hybrid)):
            raise ValueError(f"rag_hybrid must be a finite number >= 0, got {self.rag_hybrid}")
        for name in ("max_samples", "eval_blocks", "bleu_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bleu_max_new_tokens < 1:
            raise ValueError(f"bleu_max_new_tokens must be >= 1, got {self.bleu_max_new_tokens}")


@dataclass
class LMRunConfig:
    """Everything an lm run needs: model, data and the shared training settings."""

    model: LMModelConfig = field(default_factory=LMModelConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    train: TrainConfig = field(default_factory=_lm_train_config)


def _resolve_annotations() -> None:
    # TrainConfig lives beside torch code, so it is imported when a config is built, not at CLI start-up.
    from fnbody.train.loop import TrainConfig

    globals().update(TrainConfig=TrainConfig)


# ----- evaluation and callbacks -------------------------------------------------------------------

def bleu_on_records(gen, records: Sequence[dict], max_new_tokens: int, batch_size: int = 8) -> dict:
    """Greedy bodies for `records`' prompts, scored with the BLEU family (fnbody.evaluate.bleu)."""
    from fnbody.evaluate.bleu import bleu_report
    from fnbody.generate.base import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    hyps = [c[0].text for c in gen.generate([r["prompt"] for r in records], cfg)]
    return bleu_report(hyps, [r["body"] for r in records], [r["code"] for r in records])


def full_model(trainer):
    """The trained model with full weights: the model itself, or under FSDP (rank 0, inside a callback) a plain copy."""
    if not trainer.fsdp:
        return trainer.model
    import torch
    from transformers import AutoModelForCausalLM

    from fnbody.train.checkpoint import unwrap

    # Built on the meta device, so no memory or time goes into weights the gathered ones replace.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(unwrap(trainer.model).config)
    plain.load_state_dict(trainer.model_state_dict(), strict=False, assign=True)
    plain.tie_weights()
    left = [n for n, t in plain.state_dict().items() if t.is_meta]
    if left:
        raise FnbodyError(f"exporting the FSDP model: weights missing from the gathered state: {left[:5]}")
    return plain


def _callbacks(out_dir: Path, tokenizer):
    from fnbody.models.transformer import export_hf
    from fnbody.plots import plot_curves
    from fnbody.train.loop import Callback, read_metrics

    class PlotAndExport(Callback):
        """Redraw the curves after each evaluation; export the best model as the run folder's HF model."""

        def on_eval_end(self, trainer, metrics):
            rows = read_metrics(out_dir)
            plot_curves(rows, out_dir / "curves.png", [
                ("cross-entropy per token", ["train_loss", "valid_loss"]),
                ("valid perplexity", ["valid_ppl"]),
                ("generation BLEU on valid (Figure 2)", ["valid_bleu", "valid_codexglue_bleu"]),
                ("seed-BLEU on valid (the report's metric)", ["valid_seed_bleu"]),
            ], x="step", title="lm training")

        def on_checkpoint(self, trainer, path, is_best):
            if is_best:
                export_hf(full_model(trainer), tokenizer, out_dir)

        def on_train_end(self, trainer):
            # No evaluation ever ran (or none improved): still leave a loadable model.
            if trainer.dist.is_main and not (out_dir / "model.safetensors").exists():
                export_hf(full_model(trainer), tokenizer, out_dir)

    return PlotAndExport()


# ----- training -------------------------------------------------------------------------------

def _context_length(model) -> int:
    c = model.config
    return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2048


def _rag_contexts(data: LMDataConfig, tokenizer, device: str = "cpu"):
    """(context_fn, cache key) for training with retrieved context, or (None, "") without an index.

    The index's query encoder runs on the training device: a pretrained encoder (MiniLM) embeds tens of
    thousands of training docstrings, which a GPU does in seconds.
    """
    if not data.rag_index:
        return None, ""
    from fnbody.augment.rag import TokenBudget, training_contexts
    from fnbody.search.index import SearchIndex, check_hybrid

    index = SearchIndex.load(data.rag_index, device=device)
    check_hybrid(index, data.rag_hybrid)
    budget = data.rag_budget_tokens or data.block_size // 2

    fits = TokenBudget(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]), budget,
                       count_many=lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])

    key = f"rag|index:{index.info['model_fingerprint'][:16]}|count:{len(index)}|k:{data.rag_k}|budget:{budget}|fraction:{data.rag_fraction:g}|fit:pieces"
    if data.rag_hybrid > 0:  # dense-only keys stay as they were, so existing caches still match
        key += f"|hybrid:{data.rag_hybrid:g}|bm25:{len(index.bm25)}"

    def contexts(records):
        # Retrieve only for the functions that get context: retrieval is the slow part of tokenising.
        chosen = [i for i, r in enumerate(records) if with_context(r, data.rag_fraction)]
        out = [""] * len(records)
        for i, c in zip(chosen, training_contexts([records[i] for i in chosen], index, data.rag_k, fits, hybrid=data.rag_hybrid)):
            out[i] = c
        return out

    return contexts, key


def with_context(record: dict, fraction: float) -> bool:
    """Whether a training function gets retrieved context: a stable hash of its source, not the RNG, picks it."""
    if fraction >= 1.0:
        return True
    import hashlib

    text = record.get("url") or record.get("code") or record["prompt"]
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64 < fraction


def train_lm(corpus_dir: str | Path, out_dir: str | Path, cfg: LMRunConfig, *, resume: bool = False,
             callbacks: Sequence = (), argv: list[str] | None = None) -> dict:
    """Train an LM on a corpus into run folder `out_dir` (DDP under torchrun); returns the trainer state plus the last evaluation."""
    import torch

    from fnbody.config import check_resume_config, prepare_run_dir, write_run_info
    from fnbody.corpus.io import check_corpus, iter_split, read_split
    from fnbody.generate.lm import LMGenerator
    from fnbody.models.transformer import cache_root, check_tokenizer, resolve_init
    from fnbody.seed import set_seed
    from fnbody.train.distributed import barrier, cleanup, init_distributed
    from fnbody.train.lm_data import PackedBlocks, collate_blocks, evaluate_loss, lm_loss, load_or_tokenize
    from fnbody.train.loop import Trainer

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    check_corpus(corpus_dir)
    has_ckpt = prepare_run_dir(out_dir, resume, KIND)
    dist = init_distributed(cfg.train.device)
    max_samples = cfg.data.max_samples or None
    try:
        set_seed(cfg.train.seed)  # before building the model, so initialisation is reproducible
        if resume and has_ckpt:
            check_resume_config(out_dir, cfg, {"model": ("init", "vocab_size"), "data": ("block_size", "body_only_loss", "max_samples", "standalone_only", "rag_index", "rag_k", "rag_fraction", "rag_hybrid")})
            # The architecture and tokenizer come from the run folder; the checkpoint supplies the weights.
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(out_dir)), dtype=torch.float32)
            check_tokenizer(model, tokenizer, str(out_dir))
            source = "resume"
        else:
            def train_texts():
                return (r["prompt"] + r["body"] for r in iter_split(corpus_dir, "train", max_samples))

            init = None
            # Rank 0 converts GGUF files / trains the tokenizer first; the others then hit the caches.
            if dist.is_main:
                init = resolve_init(cfg.model.init, train_texts=train_texts, vocab_size=cfg.model.vocab_size,
                                    block_size=cfg.data.block_size, dropout=cfg.model.dropout, tokenizer_path=cfg.model.tokenizer)
                out_dir.mkdir(parents=True, exist_ok=True)
                init.tokenizer.save_pretrained(str(out_dir))
                init.model.config.save_pretrained(str(out_dir))
            barrier(dist)
            if not dist.is_main:
                tok_path = str(out_dir) if cfg.model.init.startswith("scratch:") else cfg.model.tokenizer
                init = resolve_init(cfg.model.init, vocab_size=cfg.model.vocab_size, block_size=cfg.data.block_size,
                                    dropout=cfg.model.dropout, tokenizer_path=tok_path)
            model, tokenizer, source = init.model, init.tokenizer, init.source
        context = _context_length(model)
        if cfg.data.block_size > context:
            raise FnbodyError(f"data.block_size {cfg.data.block_size} exceeds the model's context of {context} tokens")

        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root() / "lm-data"
        context_fn, context_key = _rag_contexts(cfg.data, tokenizer, str(dist.device))
        splits = {}
        for rank_turn in (True, False):  # rank 0 tokenises and caches; then the others read the cache
            if dist.is_main == rank_turn:
                for split in ("train", "valid"):
                    splits[split] = load_or_tokenize(corpus_dir, split, tokenizer, max_samples, cache_dir, context_fn, context_key,
                                                     standalone_only=cfg.data.standalone_only)
            barrier(dist)
        train_blocks = PackedBlocks(splits["train"][0], splits["train"][1], cfg.data.block_size, cfg.data.body_only_loss)
        valid_blocks = PackedBlocks(splits["valid"][0], splits["valid"][1], cfg.data.block_size, cfg.data.body_only_loss)
        bleu_records = read_split(corpus_dir, "valid", min(cfg.data.bleu_samples, max_samples or cfg.data.bleu_samples)) if cfg.data.bleu_samples else []

        data_stats = {
            "corpus": str(corpus_dir), "init_source": source, "train_tokens": int(len(splits["train"][0])),
            "valid_tokens": int(len(splits["valid"][0])), "train_blocks": len(train_blocks), "valid_blocks": len(valid_blocks),
            "tokenised_from_cache": bool(splits["train"][2] and splits["valid"][2]), "bleu_prompts": len(bleu_records),
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        }
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_run_info(out_dir, KIND, cfg, argv, data=data_stats)

        def evaluate(m) -> dict:
            metrics = evaluate_loss(m, valid_blocks, cfg.data.eval_batch_size, cfg.data.eval_blocks)
            if bleu_records:
                gen = LMGenerator(m, tokenizer, name="lm-eval")
                rep = bleu_on_records(gen, bleu_records, cfg.data.bleu_max_new_tokens, batch_size=cfg.data.eval_batch_size)["metrics"]
                metrics.update({"valid_bleu": rep["bleu"]["score"], "valid_seed_bleu": rep["seed-bleu"]["score"],
                                "valid_codexglue_bleu": rep["codexglue-bleu"]["score"], "bleu_signature": rep["bleu"]["signature"]})
            return metrics

        trainer = Trainer(model, cfg.train, train_blocks, collate_blocks, lm_loss, out_dir, evaluate=evaluate,
                          callbacks=[_callbacks(out_dir, tokenizer), *callbacks], dist_info=dist)
        state = trainer.fit(resume=resume)
        evals = [r for r in trainer.metrics() if "valid_loss" in r]
        return {**state, **(evals[-1] if evals else {}), "data": data_stats}
    finally:
        cleanup(dist)


def build_run_config(args: argparse.Namespace) -> LMRunConfig:
    """Defaults, then --config TOML, then flags, then --set overrides."""
    from fnbody.config import apply_overrides, apply_section_flags, from_dict, load_toml

    _resolve_annotations()
    cfg = LMRunConfig()
    if getattr(args, "config", None):
        cfg = from_dict(LMRunConfig, load_toml(args.config))
    flags = {
        "model": {"init": args.init, "tokenizer": args.tokenizer, "vocab_size": args.vocab_size},
        "data": {"block_size": args.block_size, "max_samples": args.max_samples, "body_only_loss": True if args.body_only else None},
        "train": {"batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "lr": args.lr, "max_epochs": args.epochs,
                  "max_steps": args.max_steps, "eval_every": args.eval_every, "seed": args.seed, "device": args.device,
                  "compile": True if args.compile else None},
    }
    cfg = apply_section_flags(cfg, flags, "lm", args.max_epochs)
    return apply_overrides(cfg, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_run_config(args)
    result = train_lm(args.corpus, args.out, cfg, resume=args.resume, argv=sys.argv)
    if "valid_loss" in result:
        bleu = f", valid BLEU {result['valid_bleu']:.2f}" if "valid_bleu" in result else ""
        print(f"trained lm to step {result['step']}: valid loss {result['valid_loss']:.4f} (ppl {result['valid_ppl']:.2f}){bleu}; "
              f"run folder {args.out}", file=sys.stderr)
    return 0


def register(sub, groups) -> None:
    p = groups["train"].add_parser(
        "lm", help="fine-tune a transformer LM (SmolLM2, GPT-2, any HF model) or train GPT-2 from scratch",
        description="Train a causal LM on whole functions (prompt + body) separated by end-of-text, as the report fine-tuned "
                    "GPT-2. The run folder loads with plain transformers (AutoModelForCausalLM.from_pretrained(RUN)). "
                    "Runs under `torchrun --nproc_per_node N` with DDP (or FSDP2: --set train.parallel=fsdp).")
    p.add_argument("--corpus", required=True, help="corpus folder (fnbody corpus build)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--init", default=None, help="smollm2 (default) | scratch:tiny|small|gpt2-124m | HF folder | .gguf file | hub name")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder to use instead of the init's")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary for scratch:* inits (8192)")
    p.add_argument("--config", default=None, help="TOML file with [model], [data], [train] tables")
    p.add_argument("--block-size", type=int, default=None, help="tokens per training block (512)")
    p.add_argument("--body-only", action="store_true", help="mask the loss to body tokens")
    p.add_argument("--batch-size", type=int, default=None, help="blocks per optimizer step, over all processes")
    p.add_argument("--micro-batch-size", type=int, default=None, help="blocks per forward pass per process (gradient accumulation)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (0 = each epoch end)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (0 = no cap)")
    p.add_argument("--max-epochs", type=int, default=None, help="debug cap on epochs")
    p.add_argument("--max-samples", type=int, default=None, help="only the first N functions of each split")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. train.lr=3e-4, data.bleu_samples=0")
    p.set_defaults(func=cmd_train)

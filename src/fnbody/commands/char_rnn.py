"""`fnbody train char-rnn` (the report's baseline generator) and `fnbody sweep` (its Table 4.1).

Training text: the train split's functions (their `code`, as written) joined by the separator
symbol; validation: the valid split's text the same way. Windows of `seq_len + 1` characters
start every `seq_len` characters; each epoch visits them in a fresh seeded order, through the
shared `Trainer`. Evaluation is the mean per-character cross-entropy over the whole valid text
(and a fixed slice of the train text), plotted per epoch as loss and perplexity (Figures 9-10).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from fnbody.errors import FnbodyError

if TYPE_CHECKING:
    from fnbody.models.char_rnn import CharRNNConfig
    from fnbody.train.loop import TrainConfig

KIND = "char-rnn"


def _report_train_config():
    """The report's optimisation: Adam 0.002 decaying 0.97/epoch, batch 50, clip by value 5, 50 epochs."""
    from fnbody.train.loop import TrainConfig

    return TrainConfig(batch_size=50, max_epochs=50, optimizer="adam", lr=0.002, schedule="exp-epoch", lr_decay=0.97,
                       clip_value=5.0, log_every=50)


@dataclass
class CharDataConfig:
    """How the corpus becomes a character stream."""

    seq_len: int = field(default=50, metadata={"help": "characters per training window (the report also uses 128)"})
    text: Literal["code", "source"] = field(default="code", metadata={"help": "code = CSN `code` as written; source = prompt + body"})
    min_count: int = field(default=1, metadata={"help": "symbols seen fewer times in train become unknown"})
    max_samples: int = field(default=0, metadata={"help": "only the first N functions of each split (0 = all)"})
    valid_max_chars: int = field(default=0, metadata={"help": "evaluate on at most this many valid chars (0 = all)"})
    train_eval_chars: int = field(default=100_000, metadata={"help": "train chars scored at each evaluation (for the train curve)"})
    eval_batch_size: int = field(default=128, metadata={"help": "windows per evaluation batch"})

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.eval_batch_size < 1:
            raise ValueError("seq_len and eval_batch_size must be >= 1")


def _model_default():
    from fnbody.models.char_rnn import CharRNNConfig

    return CharRNNConfig()


@dataclass
class CharRNNRunConfig:
    """Everything a char-RNN run needs: model, data and the shared training settings."""

    model: CharRNNConfig = field(default_factory=_model_default)
    data: CharDataConfig = field(default_factory=CharDataConfig)
    train: TrainConfig = field(default_factory=_report_train_config)


def _resolve_annotations() -> None:
    # These configs live beside torch code, so they are imported when a config is built, not at
    # CLI start-up; from_dict resolves the annotations through this module's globals.
    from fnbody.models.char_rnn import CharRNNConfig
    from fnbody.train.loop import TrainConfig

    globals().update(CharRNNConfig=CharRNNConfig, TrainConfig=TrainConfig)


# ----- data ------------------------------------------------------------------------------------

class CharWindows:
    """Map-style dataset of (seq_len + 1)-char windows over one LongTensor of ids; item i starts at i * seq_len."""

    def __init__(self, ids, seq_len: int) -> None:
        self.ids = ids  # (N,) int64
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self.ids) - 1) // self.seq_len)

    def __getitem__(self, i: int):
        s = i * self.seq_len
        return self.ids[s:s + self.seq_len + 1]  # (T + 1,): input ids[:-1], targets ids[1:]


def collate_windows(items: list):
    """Stack windows into a (B, T + 1) batch."""
    import torch

    return torch.stack(items)


def window_loss(model, batch):
    """Mean per-char cross-entropy of a (B, T + 1) batch."""
    return model(batch[:, :-1], batch[:, 1:])[1]


def split_text(corpus_dir: Path, split: str, cfg: CharDataConfig, max_samples: int | None) -> tuple[list[str], list[dict]]:
    """The texts of one split's functions (per `cfg.text`) and their records."""
    from fnbody.corpus.io import read_split

    rows = read_split(corpus_dir, split, max_samples)
    texts = []
    for i, r in enumerate(rows):
        t = r.get("code") if cfg.text == "code" else (r.get("prompt") or "") + (r.get("body") or "")
        if not isinstance(t, str) or not t:
            raise FnbodyError(f"{corpus_dir}/{split}: record {i} has no {cfg.text!r} text")
        texts.append(t)
    return texts, rows


def mean_char_loss(model, ids, seq_len: int, batch_size: int) -> float:
    """Mean per-char cross-entropy of predicting ids[1:] from ids[:-1], in windows of `seq_len` (fresh state each)."""
    import torch
    import torch.nn.functional as F

    from fnbody.models.char_rnn import IGNORE_INDEX

    n = len(ids) - 1
    if n < 1:
        return float("nan")
    m = math.ceil(n / seq_len)
    x = torch.zeros(m * seq_len, dtype=torch.long)
    y = torch.full((m * seq_len,), IGNORE_INDEX, dtype=torch.long)
    x[:n], y[:n] = ids[:-1], ids[1:]
    x, y = x.view(m, seq_len), y.view(m, seq_len)  # (M, T)
    device = next(model.parameters()).device
    total = 0.0
    for s in range(0, m, batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        logits, _ = model(xb)  # (b, T, V)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), yb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum").item()
    return total / n


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


# ----- training -------------------------------------------------------------------------------

def _plot_callback(out_dir: Path):
    from fnbody.plots import plot_curves
    from fnbody.train.loop import Callback, read_metrics

    class PlotCurves(Callback):
        """Redraw the loss (Figure 9) and perplexity (Figure 10) curves after each evaluation."""

        def on_eval_end(self, trainer, metrics):
            rows = read_metrics(out_dir)
            plot_curves(rows, out_dir / "loss.png", [("cross-entropy per char", ["train_loss", "train_eval_loss", "valid_loss"])], x="epoch", title="char-RNN loss")
            plot_curves(rows, out_dir / "perplexity.png", [("perplexity per char", ["train_ppl", "valid_ppl"])], x="epoch", title="char-RNN perplexity")

    return PlotCurves()


def train_char_rnn(corpus_dir: str | Path, out_dir: str | Path, cfg: CharRNNRunConfig, *, resume: bool = False,
                   callbacks: Sequence = (), argv: list[str] | None = None) -> dict:
    """Train a char-RNN on a corpus into run folder `out_dir`; returns the trainer state plus the last evaluation."""
    import dataclasses

    import torch

    from fnbody.config import check_resume_config, prepare_run_dir, write_run_info
    from fnbody.corpus.io import check_corpus
    from fnbody.generate.char_rnn import VOCAB_FILE
    from fnbody.models.char_rnn import CharRNN
    from fnbody.seed import set_seed
    from fnbody.tokens.chars import UNK_ID, CharVocab
    from fnbody.train.loop import Trainer

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    check_corpus(corpus_dir)
    has_ckpt = prepare_run_dir(out_dir, resume, KIND)
    max_samples = cfg.data.max_samples or None
    train_texts, _ = split_text(corpus_dir, "train", cfg.data, max_samples)
    valid_texts, _ = split_text(corpus_dir, "valid", cfg.data, max_samples)
    if resume and has_ckpt:
        check_resume_config(out_dir, cfg, {"model": None, "data": None}, ignore=("vocab_size", "valid_max_chars", "train_eval_chars", "eval_batch_size"))  # evaluation-only or derived
        vocab = CharVocab.load(out_dir / VOCAB_FILE)
    else:
        vocab = CharVocab.build(train_texts, cfg.data.min_count)
    train_ids = torch.from_numpy(vocab.encode(vocab.join(train_texts)))  # (N,)
    valid_ids = torch.from_numpy(vocab.encode(vocab.join(valid_texts)))
    if cfg.data.valid_max_chars:
        valid_ids = valid_ids[:cfg.data.valid_max_chars + 1]
    train_eval_ids = train_ids[:cfg.data.train_eval_chars + 1]
    dataset = CharWindows(train_ids, cfg.data.seq_len)
    if len(dataset) == 0:
        raise FnbodyError(f"{corpus_dir}: train text has {len(train_ids)} chars, fewer than one window of {cfg.data.seq_len + 1}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=len(vocab)))

    out_dir.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run files
    data_stats = {
        "corpus": str(corpus_dir), "train_functions": len(train_texts), "valid_functions": len(valid_texts),
        "train_chars": int(len(train_ids)), "valid_chars": int(len(valid_ids)), "vocab_size": len(vocab),
        "valid_unknown_rate": float((valid_ids == UNK_ID).float().mean()) if len(valid_ids) else 0.0,
        "train_windows": len(dataset),
    }
    if is_main:
        vocab.save(out_dir / VOCAB_FILE)
        write_run_info(out_dir, KIND, cfg, argv, data=data_stats)

    set_seed(cfg.train.seed)  # before building the model, so initialisation is reproducible
    model = CharRNN(cfg.model)
    T, eb = cfg.data.seq_len, cfg.data.eval_batch_size

    def evaluate(m) -> dict:
        valid = mean_char_loss(m, valid_ids, T, eb)
        train = mean_char_loss(m, train_eval_ids, T, eb)
        return {"valid_loss": valid, "valid_ppl": _ppl(valid), "train_eval_loss": train, "train_ppl": _ppl(train)}

    trainer = Trainer(model, cfg.train, dataset, collate_windows, window_loss, out_dir, evaluate=evaluate,
                      callbacks=[_plot_callback(out_dir), *callbacks])
    state = trainer.fit(resume=resume)
    evals = [r for r in trainer.metrics() if "valid_loss" in r]
    return {**state, **(evals[-1] if evals else {}), "data": data_stats}


def build_run_config(args: argparse.Namespace) -> CharRNNRunConfig:
    """Defaults (the report), then --config TOML, then flags, then --set overrides."""
    from fnbody.config import apply_overrides, apply_section_flags, from_dict, load_toml

    _resolve_annotations()
    cfg = CharRNNRunConfig()
    if getattr(args, "config", None):
        cfg = from_dict(CharRNNRunConfig, load_toml(args.config))
    flags = {
        "model": {"cell": args.cell, "hidden": args.hidden, "layers": args.layers, "input": args.input,
                  "embedding_dim": args.embedding_dim, "dropout": args.dropout},
        "data": {"seq_len": args.seq_len, "max_samples": args.max_samples},
        "train": {"batch_size": args.batch_size, "lr": args.lr, "lr_decay": args.lr_decay, "max_epochs": args.epochs,
                  "max_steps": args.max_steps, "clip_value": args.clip_value, "clip_norm": args.clip_norm,
                  "seed": args.seed, "device": args.device},
    }
    cfg = apply_section_flags(cfg, flags, "char-rnn", args.max_epochs)
    return apply_overrides(cfg, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_run_config(args)
    result = train_char_rnn(args.corpus, args.out, cfg, resume=args.resume, argv=sys.argv)
    print(f"trained char-rnn to step {result['step']}: valid loss {result.get('valid_loss', float('nan')):.4f} "
          f"(ppl {result.get('valid_ppl', float('nan')):.2f}); run folder {args.out}", file=sys.stderr)
    return 0


# ----- sweep (Table 4.1) ------------------------------------------------------------------------

def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


CELLS = ("lstm", "gru", "rnn")


def _cells(text: str) -> list[str]:
    cells = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise argparse.ArgumentTypeError(f"cells must be among {','.join(CELLS)}; got {text!r}")
    return cells


def check_sweep_grid(cells: Sequence[str], lrs: Sequence[float], batch_sizes: Sequence[int],
                     names: tuple[str, str, str] = ("--cells", "--lrs", "--batch-sizes"), if_empty: str = "give at least one value") -> None:
    """ValueError naming the setting (`names`: how the caller spells cells, lrs, batch sizes) when the sweep grid is empty
    (the message ends with `if_empty`) or holds an unknown cell, a learning rate that is not a finite number > 0, or a batch size < 1."""
    for name, values in zip(names, (cells, lrs, batch_sizes)):
        if not values:
            raise ValueError(f"{name} is empty: {if_empty}")
    bad = [c for c in cells if c not in CELLS]
    if bad:
        raise ValueError(f"{names[0]} {bad} unknown; known: {list(CELLS)}")
    if not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise ValueError(f"{names[1]} must all be finite numbers > 0, got {list(lrs)}")
    if not all(b >= 1 for b in batch_sizes):
        raise ValueError(f"{names[2]} must all be >= 1, got {list(batch_sizes)}")


SWEEP_COLUMNS = ("cell", "batch_size", "lr", "steps", "epochs", "valid_loss", "valid_ppl", "seed_bleu_train", "seed_bleu_eval",
                 "bleu_train", "bleu_eval", "n_train", "n_eval", "seconds")


def bleu_on_split(gen, corpus_dir: Path, split: str, n: int, decoding) -> dict:
    """Bodies for the first `n` prompts of a split (decoded per `decoding`), scored with the evaluation BLEU family."""
    from fnbody.corpus.io import read_split
    from fnbody.evaluate.bleu import bleu_report

    rows = read_split(corpus_dir, split, n)
    outs = gen.generate([r["prompt"] for r in rows], decoding)
    hyps = [o[0].text for o in outs]
    rep = bleu_report(hyps, [r["body"] for r in rows], [r["code"] for r in rows])
    return {"n": len(rows), "metrics": rep["metrics"]}


def write_sweep_table(out_dir: Path, rows: list[dict], total: int, signatures: dict, notes: Sequence[str] = ()) -> None:
    """Write sweep.md and sweep.csv atomically; the markdown says when the sweep is not complete."""
    from fnbody.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(out_dir / "sweep.csv", buf.getvalue())
    status = "complete" if len(rows) == total else f"PARTIAL: {len(rows)} of {total} settings done"
    lines = [f"# char-RNN sweep (the report's Table 4.1): {status}", ""]
    lines += ["| cell | batch | lr | steps | valid loss | valid ppl | seed-BLEU train | seed-BLEU eval | BLEU train | BLEU eval |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['batch_size']} | {r['lr']:g} | {r['steps']} | {r['valid_loss']:.4f} | {r['valid_ppl']:.2f} | "
                     f"{r['seed_bleu_train']:.4f} | {r['seed_bleu_eval']:.4f} | {r['bleu_train']:.2f} | {r['bleu_eval']:.2f} |")
    lines += ["", "Train = first prompts of the train split, eval = first prompts of the valid split.", *notes, ""]
    for name, sig in signatures.items():
        lines.append(f"- {name}: `{sig}`")
    atomic_write_text(out_dir / "sweep.md", "\n".join(lines) + "\n")


def run_sweep(corpus_dir: str | Path, out_dir: str | Path, base: CharRNNRunConfig, cells: Sequence[str], lrs: Sequence[float],
              batch_sizes: Sequence[int], bleu_samples: int, decoding) -> list[dict]:
    """Train every cell x lr x batch-size setting and score BLEU on train and eval; finished settings are reused."""
    import dataclasses

    from fnbody.config import config_hash, to_dict
    from fnbody.generate.char_rnn import load_generator
    from fnbody.io import read_json, write_json
    from fnbody.progress import progress

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    grid = [(c, b, lr) for c in cells for b in batch_sizes for lr in lrs]
    rows: list[dict] = []
    signatures: dict = {}
    t = base.train
    notes = [f"Training per setting: at most {t.max_epochs} epochs" + (f", capped at {t.max_steps} steps" if t.max_steps else "")
             + (f", first {base.data.max_samples} functions per split" if base.data.max_samples else ", all functions")
             + f"; model {base.model.hidden}x{base.model.layers}, seq {base.data.seq_len}, decay {t.lr_decay}/epoch, clip {t.clip_value}.",
             f"Decoding: temperature {decoding.temperature}, top-k {decoding.top_k}, seed {decoding.seed}, "
             f"at most {decoding.max_new_tokens} chars, cut at the dedent."]
    for cell, bs, lr in progress(grid, desc="sweep", unit="setting"):
        name = f"{cell}-bs{bs}-lr{lr:g}"
        run_dir = out_dir / "runs" / name
        # Training and scoring are cached separately: a rerun with other decoding settings rescores, not retrains.
        train_path = run_dir / "sweep_train.json"
        score_path = run_dir / f"sweep_bleu-{config_hash({'decoding': to_dict(decoding), 'n': bleu_samples})}.json"
        t0 = time.perf_counter()
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, cell=cell),
                                  train=dataclasses.replace(base.train, batch_size=bs, lr=lr, show_progress=False))
        key = config_hash(to_dict(cfg))
        if train_path.exists():
            res = read_json(train_path)
            # A setting trained with other flags (steps, model size, seed...) is not this sweep's row: never mix them.
            if res.get("config_key", key) != key:
                raise FnbodyError(f"{run_dir} was trained with other sweep settings; use a new --out (or delete that folder)")
        else:
            state = train_char_rnn(corpus_dir, run_dir, cfg, resume=(run_dir / "checkpoints" / "last").exists(),
                                   argv=["fnbody", "sweep", name])
            res = {"steps": state["step"], "epochs": round(state["step"] / max(1, state["data"]["train_windows"] // bs), 2),
                   "valid_loss": state["valid_loss"], "valid_ppl": state["valid_ppl"], "train_seconds": round(time.perf_counter() - t0, 1), "config_key": key}
            write_json(train_path, res)
        if score_path.exists():
            scores = read_json(score_path)
        else:
            gen = load_generator(run_dir, device=base.train.device)
            tr = bleu_on_split(gen, corpus_dir, "train", bleu_samples, decoding)
            ev = bleu_on_split(gen, corpus_dir, "valid", bleu_samples, decoding)
            scores = {
                "seed_bleu_train": tr["metrics"]["seed-bleu"]["score"], "seed_bleu_eval": ev["metrics"]["seed-bleu"]["score"],
                "bleu_train": tr["metrics"]["bleu"]["score"], "bleu_eval": ev["metrics"]["bleu"]["score"],
                "n_train": tr["n"], "n_eval": ev["n"], "decoding": to_dict(decoding),
                "signatures": {"seed-bleu": ev["metrics"]["seed-bleu"]["signature"], "bleu": ev["metrics"]["bleu"]["signature"]},
            }
            write_json(score_path, scores)
        row = {"cell": cell, "batch_size": bs, "lr": lr, **res, **scores, "seconds": round(res.get("train_seconds", 0) + time.perf_counter() - t0, 1)}
        signatures = row.get("signatures", signatures)
        rows.append(row)
        write_sweep_table(out_dir, rows, len(grid), signatures, notes)
    return rows


def check_sweep_args(args: argparse.Namespace) -> None:
    """Refuse an empty or invalid grid and bad caps before any training, naming the flag."""
    try:
        check_sweep_grid(args.cells, args.lrs, args.batch_sizes)
    except ValueError as e:
        raise FnbodyError(str(e)) from None
    for flag, v in (("--max-steps", args.max_steps), ("--epochs", args.epochs), ("--max-samples", args.max_samples), ("--top-k", args.top_k)):
        if v is not None and v < 0:
            raise FnbodyError(f"{flag} must be >= 0, got {v}")
    if args.bleu_samples is not None and args.bleu_samples < 1:  # settings are ranked by BLEU: 0 prompts cannot rank them
        raise FnbodyError(f"--bleu-samples must be >= 1 (leave it out for the default: 16, or 500 with --full), got {args.bleu_samples}")
    if args.max_new_tokens < 1:
        raise FnbodyError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FnbodyError(f"--out {out}: is a file, not a folder")
    if not Path(args.corpus).is_dir():
        raise FnbodyError(f"{args.corpus}: corpus folder not found; build one with `fnbody corpus build --out {args.corpus}`")


def cmd_sweep(args: argparse.Namespace) -> int:
    import dataclasses

    check_sweep_args(args)
    _resolve_annotations()
    base = CharRNNRunConfig()
    if args.full:
        # The report's Table 4.1 runs: 20 epochs each, full data, BLEU over more prompts.
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, max_epochs=20))
    else:
        # Small enough for a 2-core CPU in a few minutes: a few hundred chars of context, capped steps.
        base = dataclasses.replace(base, data=dataclasses.replace(base.data, max_samples=2000, valid_max_chars=50_000, train_eval_chars=20_000),
                                   train=dataclasses.replace(base.train, max_epochs=20, max_steps=30))
    over = {"max_steps": args.max_steps, "max_epochs": args.epochs, "device": args.device, "seed": args.seed}
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, **{k: v for k, v in over.items() if v is not None}))
    if args.max_samples is not None:
        base = dataclasses.replace(base, data=dataclasses.replace(base.data, max_samples=args.max_samples))
    from fnbody.config import apply_overrides

    base = apply_overrides(base, args.set)
    bleu_samples = args.bleu_samples if args.bleu_samples is not None else (500 if args.full else 16)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from fnbody.generate.base import GenerationConfig

    try:
        decoding = GenerationConfig(temperature=args.temperature, top_k=args.top_k, max_new_tokens=args.max_new_tokens, batch_size=32, seed=args.seed or 0)
    except ValueError as e:
        raise FnbodyError(f"bad decoding flag: {e}") from None
    rows = run_sweep(args.corpus, args.out, base, args.cells, args.lrs, args.batch_sizes, bleu_samples, decoding)
    best = max(rows, key=lambda r: r["seed_bleu_eval"])
    print(f"sweep of {len(rows)} settings written to {Path(args.out) / 'sweep.md'}; best eval seed-BLEU {best['seed_bleu_eval']:.4f} "
          f"({best['cell']}, batch {best['batch_size']}, lr {best['lr']:g})", file=sys.stderr)
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="corpus folder (fnbody corpus build)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (0 = no cap)")
    p.add_argument("--max-samples", type=int, default=None, help="only the first N functions of each split")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. train.lr=0.01, model.dropout=0.2")


def register(sub, groups) -> None:
    p = groups["train"].add_parser("char-rnn", help="train the char-RNN generator (the report's baseline)",
                                   description="Train a character-level LSTM/GRU/RNN on the train split's functions. "
                                               "Defaults are the report's: LSTM, hidden 128, 2 layers, 50-char windows, batch 50, "
                                               "Adam 0.002 decaying 0.97 per epoch, gradients clipped at 5, 50 epochs.")
    _add_common(p)
    p.add_argument("--config", default=None, help="TOML file with [model], [data], [train] tables")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn"), default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--input", choices=("embedding", "onehot"), default=None, help="input encoding (report: one-hot)")
    p.add_argument("--embedding-dim", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--seq-len", type=int, default=None, help="characters per window (50; the report also uses 128)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-decay", type=float, default=None, help="per-epoch learning-rate multiplier")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None, help="debug cap on epochs")
    p.add_argument("--clip-value", type=float, default=None, help="clip each gradient to [-v, v] (report: 5)")
    p.add_argument("--clip-norm", type=float, default=None, help="clip the gradient norm instead/also (0 = off)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="char-RNN sweep over cell x learning rate x batch size (the report's Table 4.1)",
                       description="Train one char-RNN per cell x lr x batch-size setting and score BLEU (seed-bleu = the report's metric) "
                                   "on train and eval prompts. Small and CPU-friendly by default; --full uses the report's sizes. "
                                   "Finished settings are reused when rerun.")
    _add_common(s)
    s.add_argument("--full", action="store_true", help="report sizes: all data, 20 epochs per setting, 500 BLEU prompts")
    s.add_argument("--cells", type=_cells, default=["lstm", "gru", "rnn"], help="comma-separated (lstm,gru,rnn)")
    s.add_argument("--lrs", type=_floats, default=[0.02, 0.002, 0.0002], help="comma-separated starting learning rates")
    s.add_argument("--batch-sizes", type=_ints, default=[64, 128], help="comma-separated batch sizes")
    s.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None, help="epochs per setting")
    s.add_argument("--bleu-samples", type=int, default=None, help="prompts per split scored with BLEU (default 16, or 500 with --full)")
    s.add_argument("--max-new-tokens", type=int, default=256, help="characters generated per body")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="decoding temperature for the BLEU bodies (0 = greedy; an undertrained char-RNN decodes greedily to blank lines)")
    s.add_argument("--top-k", type=int, default=0, help="sample from the k most likely chars (0 = all)")
    s.set_defaults(func=cmd_sweep)

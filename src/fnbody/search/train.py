"""Training a two-tower search model on a corpus with the shared Trainer (CSN hyperparameters by default)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fnbody.errors import FnbodyError
from fnbody.search.data import PairDataset, encode_pairs
from fnbody.search.embed import CODE_VOCAB, KIND, QUERY_VOCAB
from fnbody.search.metrics import CSN_EVAL_BATCH, batched_mrr, mean_reciprocal_rank
from fnbody.search.model import SearchModelConfig, TwoTowerModel
from fnbody.search.pretrained import SPEC_FILE, is_pretrained
from fnbody.train.loop import METRICS, Callback, TrainConfig, read_metrics

CURVES = "curves.png"


@dataclass
class SearchTrainConfig:
    """Everything `fnbody train search` resolves: model, optimisation and data settings."""

    model: SearchModelConfig = field(default_factory=SearchModelConfig, metadata={"help": "two-tower architecture"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    func_name_fraction: float = field(default=0.1, metadata={"help": "share of training queries replaced by the function name (CSN)"})
    vocab_min_frequency: int = field(default=2, metadata={"help": "minimum count for a BPE merge"})
    max_valid: int = field(default=0, metadata={"help": "cap on validation pairs scored each epoch (0 = all)"})
    finetune: bool = field(default=False, metadata={"help": "pretrained encoders (minilm): train their weights; false = use them "
                                                    "frozen, zero-shot (no training steps). Other encoders always train from scratch"})
    init_from: str = field(default="", metadata={"help": "start from this trained search run's weights and tokenizers (same encoder "
                                                   "and architecture), e.g. to go on training it on a larger corpus; empty = fresh"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.func_name_fraction <= 1.0:
            raise ValueError(f"func_name_fraction is a share in [0, 1], got {self.func_name_fraction}")
        if self.vocab_min_frequency < 1 or self.max_valid < 0:
            raise ValueError("vocab_min_frequency must be >= 1 and max_valid >= 0")


def default_config(encoder: str) -> SearchTrainConfig:
    """CSN's documented defaults for `encoder`: Adam, lr decay 0.98 per epoch, clip 1, patience 5 on valid MRR.

    minilm instead gets sentence-transformers' fine-tuning recipe (AdamW, lr 2e-5, warm-up, in-batch softmax
    at scale 20 over unit vectors, one shared tower), a CPU-sized batch and one epoch.
    """
    if encoder == "minilm":
        return minilm_config()
    # NBoW: batch 1000, lr 0.01, cosine loss. The sequence encoders use CSN's smaller lr and the softmax loss.
    batch, lr, loss = {"nbow": (1000, 0.01, "cosine"), "cnn": (1000, 5e-4, "softmax"),
                       "rnn": (1000, 5e-4, "softmax"), "selfatt": (450, 5e-4, "softmax")}[encoder]
    train = TrainConfig(batch_size=batch, max_epochs=300, optimizer="adam", lr=lr, schedule="exp-epoch", lr_decay=0.98,
                        clip_norm=1.0, patience=5, best_metric="valid_mrr", best_mode="max", log_every=10)
    return SearchTrainConfig(model=SearchModelConfig(encoder=encoder, loss=loss), train=train)


def minilm_config() -> SearchTrainConfig:
    """Defaults of the pretrained all-MiniLM-L6-v2 encoder (frozen unless `finetune=true`)."""
    # Code: 128 wordpieces, the length all-MiniLM-L6-v2 was trained at (its model card). Zero-shot on 1000 valid pairs of the
    # default corpus, 128 also scores best (MRR 0.533; 200: 0.522) and costs 2.6x less than 256 to fine-tune on CPU.
    # Queries: 64, enough for nearly every docstring summary; batches are trimmed to their longest, so it costs nothing.
    model = SearchModelConfig(encoder="minilm", loss="softmax", logit_scale=20.0, share_towers=True, query_max_len=64, code_max_len=128)
    # One tower: both sides are English-like text to one WordPiece tokenizer, the pretrained model already maps them into one
    # space, and sharing halves the weights to train and to ship in each index.
    train = TrainConfig(batch_size=32, max_epochs=1, optimizer="adamw", lr=2e-5, weight_decay=0.01, schedule="cosine",
                        warmup_steps=100, min_lr_ratio=0.0, clip_norm=1.0, eval_every=200, patience=3,
                        best_metric="valid_mrr", best_mode="max", log_every=10)
    return SearchTrainConfig(model=model, train=train, max_valid=CSN_EVAL_BATCH)


@torch.no_grad()
def embed_dataset(model: TwoTowerModel, data: PairDataset, batch_size: int = CSN_EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw query and code embeddings (N, C) of a pair dataset, in order."""
    device = next(model.parameters()).device
    batch_size = model.inference_batch(batch_size)

    def embed(encoder, lengths: torch.Tensor, key: str) -> torch.Tensor:
        out = torch.zeros(len(data), model.dim)
        order = torch.argsort(lengths, stable=True)  # similar lengths together: little padding per batch
        for s in range(0, len(data), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = encoder(data.rows(idx)[key].to(device)).float().cpu()
        return out

    return embed(model.query_encoder, data.query_len, "query"), embed(model.code_encoder, data.code_len, "code")


def score_pairs(model: TwoTowerModel, data: PairDataset, loss_batch: int) -> dict:
    """Valid loss (over full training-size batches) and MRR (CSN batches of 1000, or the whole pool when smaller)."""
    q, c = embed_dataset(model, data)
    b = min(loss_batch, len(q))
    losses = [model.loss(q[s:s + b], c[s:s + b], data.group[s:s + b]).item()
              for s in range(0, len(q) - b + 1, b)]  # as the training loss: identical queries are not negatives
    sims = model.scores(q, c).float().numpy() if len(q) < CSN_EVAL_BATCH else None  # float: under bf16 autocast the product is bf16
    if sims is not None:
        mrr, n, how = mean_reciprocal_rank(sims), len(q), "pool"
    else:
        qn, cn = (torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(c, dim=-1)) if model.normalized else (q, c)
        mrr, n = batched_mrr(qn.numpy(), cn.numpy())
        how = "csn1000"
    return {"valid_loss": float(np.mean(losses)), "valid_mrr": mrr, "valid_mrr_n": n, "valid_mrr_protocol": how}


class CurvesCallback(Callback):
    """Redraws the report's Figures 5-8 (train/valid loss and valid MRR per epoch) after each evaluation."""

    def on_eval_end(self, trainer, metrics: dict) -> None:
        plot_search_curves(trainer.out_dir)


def plot_search_curves(run_dir: str | Path) -> Path | None:
    """PNG with a loss panel (train, valid) and a valid-MRR panel, x = epoch."""
    from fnbody.plots import plot_curves

    return plot_curves(read_metrics(run_dir), Path(run_dir) / CURVES,
                       panels=[("loss", ["train_loss", "valid_loss"]), ("valid MRR", ["valid_mrr"])], x="epoch")


def build_vocabs(train_records: list[dict], cfg: SearchTrainConfig, out_dir: Path, resume: bool):
    """Tokenizers of both towers: (query vocab, code vocab, pretrained spec or None, folder of initial weights or None).

    BPE vocabularies are trained on the train split (reused on resume, so ids stay stable); a pretrained
    encoder brings its own tokenizer, recorded with its config in the run's pretrained.json.
    """
    from fnbody.search.pretrained import WordPieceVocab, default_model_dir, load_spec, read_pretrained_folder, save_spec
    from fnbody.tokens.subword import SubwordVocab, train_subword_vocab

    init = Path(cfg.init_from) if cfg.init_from and not resume else None  # on resume the run's own files win
    if is_pretrained(cfg.model.encoder):
        if resume and (out_dir / SPEC_FILE).exists():  # the run's own spec; its weights come from the checkpoint
            spec, folder = load_spec(out_dir / SPEC_FILE), None
        elif init is not None:  # the starting run's spec; its weights are loaded after the model is built
            spec, folder = load_spec(init / SPEC_FILE), None
            save_spec(spec, out_dir / SPEC_FILE)
        else:
            folder = Path(cfg.model.pretrained) if cfg.model.pretrained else default_model_dir()
            spec = read_pretrained_folder(folder)
            save_spec(spec, out_dir / SPEC_FILE)
        vocab = WordPieceVocab(spec)
        return vocab, vocab, spec, folder and str(folder)
    qpath, cpath = out_dir / QUERY_VOCAB, out_dir / CODE_VOCAB
    if resume:  # the checkpoint's embedding rows mean these ids: never retrain them
        missing = [p.name for p in (qpath, cpath) if not p.exists()]
        if missing:
            raise FnbodyError(f"{out_dir}: cannot resume: {', '.join(missing)} missing (the checkpoint's token ids are defined by it)")
        return SubwordVocab.load(qpath), SubwordVocab.load(cpath), None, None
    if init is not None:  # the starting run's ids, so its embeddings keep their meaning
        qv, cv = SubwordVocab.load(init / QUERY_VOCAB), SubwordVocab.load(init / CODE_VOCAB)
        qv.save(qpath)
        cv.save(cpath)
        return qv, cv, None, None
    qv = train_subword_vocab((r.get("docstring_tokens") or [] for r in train_records), cfg.model.vocab_size, cfg.vocab_min_frequency)
    cv = train_subword_vocab((r.get("code_tokens") or [] for r in train_records), cfg.model.vocab_size, cfg.vocab_min_frequency)
    qv.save(qpath)
    cv.save(cpath)
    return qv, cv, None, None


def check_init_run(init_from: str | Path, cfg: SearchTrainConfig) -> Path:
    """The run `--init-from` names, checked: a trained search run of the same encoder with its tokenizer files."""
    from fnbody.config import read_run_info
    from fnbody.search.embed import run_files, weights_path

    init = Path(init_from)
    info = read_run_info(init)  # FnbodyError when it is no run folder
    if info.get("kind") != KIND:
        raise FnbodyError(f"--init-from {init}: a {info.get('kind')!r} run, not a search run")
    old = info["config"]["model"]
    if old.get("encoder") != cfg.model.encoder:
        raise FnbodyError(f"--init-from {init}: a {old.get('encoder')} run; it cannot start a {cfg.model.encoder} run")
    if is_pretrained(cfg.model.encoder) and not cfg.finetune:
        raise FnbodyError(f"--init-from {init}: a frozen {cfg.model.encoder} run trains nothing; add --finetune")
    weights_path(init)  # FnbodyError naming the missing weights
    missing = [name for name in run_files(old) if not (init / name).exists()]
    if missing:
        raise FnbodyError(f"--init-from {init}: search run is missing {missing}")
    return init


def read_pair_fields(corpus: str | Path, split: str, max_samples: int | None = None) -> list[dict]:
    """A split's records cut to what training pairs need, token strings interned: a fraction of the memory of whole
    records (training on the 232k-function extended corpus held 16 GB with them read whole)."""
    from fnbody.corpus.io import iter_split

    intern = sys.intern
    return [{"func_name": r.get("func_name") or "",
             "docstring_tokens": [intern(t) for t in r.get("docstring_tokens") or ()],
             "code_tokens": [intern(t) for t in r.get("code_tokens") or ()]}
            for r in iter_split(corpus, split, max_samples)]


def train_search(corpus: str | Path, out_dir: str | Path, cfg: SearchTrainConfig, *, resume: bool = False,
                 max_samples: int | None = None, argv: list[str] | None = None) -> dict:
    """Train on `corpus`'s train split, early-stop on valid MRR, write the run folder; returns the final metrics row."""
    from fnbody.config import prepare_run_dir, read_run_info, to_dict, write_run_info
    from fnbody.corpus.io import check_corpus
    from fnbody.seed import set_seed
    from fnbody.train.loop import Trainer

    out_dir = Path(out_dir)
    frozen = is_pretrained(cfg.model.encoder) and not cfg.finetune
    # A file, another kind of run or a folder of other files is refused; --resume with no checkpoints/last (a stage that
    # died before its first checkpoint, or a frozen run, which has none) starts the run again, as the pipeline needs.
    asked, resume = resume, prepare_run_dir(out_dir, resume, KIND) and resume
    saved: dict = {}
    if resume:
        saved = read_run_info(out_dir)
        if saved["config"]["model"] != to_dict(cfg.model):
            raise FnbodyError(f"{out_dir}: model config differs from the run being resumed; resume with the same settings")
    elif (out_dir / "checkpoints").exists() and not asked:
        raise FnbodyError(f"{out_dir}: already holds a training run; pass --resume to continue it or choose another --out")
    init = check_init_run(cfg.init_from, cfg) if cfg.init_from and not resume else None
    corpus_hash = check_corpus(corpus).get("content_hash")
    train_records = read_pair_fields(corpus, "train", max_samples)
    valid_records = read_pair_fields(corpus, "valid", max_samples)
    if len(train_records) < 2:
        raise FnbodyError(f"{corpus}: train split has {len(train_records)} functions; in-batch training needs at least 2")
    if resume:  # the same data, or the checkpoint's epoch and batch positions mean other functions
        before = (saved.get("corpus_hash", corpus_hash), saved.get("counts", {}).get("train", len(train_records)))
        if before != (corpus_hash, len(train_records)):
            raise FnbodyError(f"{out_dir}: cannot resume on other data: the run trained on {before[1]} functions of "
                              f"{saved.get('corpus')} ({before[0]}), this is {len(train_records)} of {corpus} ({corpus_hash}); "
                              "resume with the same --corpus and --max-samples")
    out_dir.mkdir(parents=True, exist_ok=True)
    qv, cv, spec, weights_from = build_vocabs(train_records, cfg, out_dir, resume)
    m = cfg.model
    train_data = encode_pairs(train_records, qv, cv, m.query_max_len, m.code_max_len, cfg.func_name_fraction, cfg.train.seed)
    if cfg.max_valid:
        valid_records = valid_records[:cfg.max_valid]
    valid_data = encode_pairs(valid_records, qv, cv, m.query_max_len, m.code_max_len)
    del train_records, valid_records  # the id matrices are all training needs; the records are most of the memory
    write_run_info(out_dir, KIND, cfg, argv, corpus=str(corpus), corpus_hash=corpus_hash,
                   counts={"train": len(train_data), "valid": len(valid_data)}, vocab_sizes={"query": qv.size, "code": cv.size})
    set_seed(cfg.train.seed)
    model = TwoTowerModel(m, qv.size, cv.size, spec, weights_from)
    if init is not None:
        from fnbody.search.embed import load_weights, weights_path

        load_weights(model, weights_path(init), label="--init-from ")
    batch = min(cfg.train.batch_size, len(train_data))
    if frozen:
        return save_frozen(model, valid_data, batch, out_dir)

    def compute_loss(model, batch_: dict) -> torch.Tensor:
        return model(batch_["query"], batch_["code"], batch_["group"])[2]

    evaluate = (lambda mdl: score_pairs(mdl, valid_data, batch)) if len(valid_data) >= 2 else None
    trainer = Trainer(model, cfg.train, train_data, train_data.collate, compute_loss, out_dir, evaluate=evaluate, callbacks=[CurvesCallback()])
    trainer.fit(resume=resume)
    if evaluate is None:  # no validation set: the last weights are the best we know
        from fnbody.train.checkpoint import save_checkpoint

        save_checkpoint(out_dir / "checkpoints" / "best", model, None, {"step": trainer.step})
    plot_search_curves(out_dir)
    evals = [r for r in read_metrics(out_dir) if "valid_mrr" in r]
    best = max(evals, key=lambda r: r["valid_mrr"] if math.isfinite(r["valid_mrr"]) else -1) if evals else {}
    return {"step": trainer.step, "epoch": trainer.epoch_float, "best": best}


def save_frozen(model: TwoTowerModel, valid_data: PairDataset, loss_batch: int, out_dir: Path) -> dict:
    """A zero-shot run: no training steps; the pretrained weights become the best checkpoint, scored once on valid."""
    from fnbody.io import write_jsonl
    from fnbody.train.checkpoint import save_checkpoint

    model.eval()
    row = {"step": 0, "epoch": 0.0, **(score_pairs(model, valid_data, loss_batch) if len(valid_data) >= 2 else {})}
    write_jsonl(out_dir / METRICS, [row])
    save_checkpoint(out_dir / "checkpoints" / "best", model, None, {"step": 0, "frozen": True})
    return {"step": 0, "epoch": 0.0, "best": row if "valid_mrr" in row else {}}


def config_with_overrides(encoder: str, overrides: list[str] | None) -> SearchTrainConfig:
    """Defaults for `encoder` with `--set` overrides (e.g. model.rnn_cell=lstm, train.lr=1e-3) applied."""
    from fnbody.config import apply_overrides

    cfg = apply_overrides(default_config(encoder), overrides)
    if cfg.model.encoder != encoder:
        raise FnbodyError(f"--set model.encoder={cfg.model.encoder} contradicts --encoder {encoder}; choose the encoder with --encoder")
    return cfg

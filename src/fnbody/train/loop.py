"""The one training loop. Nothing in this file knows what model it trains.

The caller gives a model, a map-style dataset, a `collate` function that turns a list of items
into a batch, and `compute_loss(model, batch) -> scalar tensor`. Evaluation, sampling and
exporting plug in as callables and callbacks (minGPT's trainer, with torchtune's resumability).

Exact resume: the batch order of epoch `e` is a permutation drawn from `seed + e`, and the
checkpoint records (step, epoch, batch index in the epoch), the optimizer and every RNG state,
so a run interrupted and resumed sees the same batches and produces the same losses.
Learning rates are a pure function of the step, so there is no scheduler state to lose.

Under torchrun the model is replicated with DDP (`parallel="ddp"`) or sharded with FSDP2
(`parallel="fsdp"`: parameters, gradients and optimizer state split over the ranks, one shard
unit per repeated block). Either way checkpoints hold full tensors in the single-process layout.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from fnbody.errors import FnbodyError
from fnbody.io import atomic_open, read_jsonl
from fnbody.progress import progress
from fnbody.seed import set_seed
from fnbody.train.checkpoint import full_state_dicts, load_checkpoint, rng_state, save_checkpoint, unwrap
from fnbody.train.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed, shard_fsdp

METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every model."""

    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step, over all processes"})
    micro_batch_size: int = field(default=0, metadata={"help": "examples per forward pass per process (0 = no accumulation)"})
    max_epochs: int = field(default=1, metadata={"help": "epochs to train"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no cap)"})
    max_seconds: float = field(default=0.0, metadata={"help": "stop cleanly after this many seconds of training in this process (checked "
                                                              "every step; under torchrun at log steps); the final evaluation and checkpoint still run (0 = no cap)"})
    optimizer: Literal["adam", "adamw"] = field(default="adamw", metadata={"help": "optimizer"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    schedule: Literal["constant", "cosine", "exp-epoch"] = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    lr_decay: float = field(default=1.0, metadata={"help": "per-epoch multiplier for the exp-epoch schedule"})
    clip_value: float = field(default=0.0, metadata={"help": "clip each gradient element to [-v, v] (0 = off)"})
    clip_norm: float = field(default=0.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = at the end of each epoch)"})
    log_every: int = field(default=10, metadata={"help": "write a train-loss row every N steps"})
    patience: int = field(default=0, metadata={"help": "stop after N evaluations without improvement (0 = never)"})
    best_metric: str = field(default="valid_loss", metadata={"help": "metric that picks the best checkpoint"})
    best_mode: Literal["min", "max"] = field(default="min", metadata={"help": "whether lower or higher best_metric is better"})
    save_optimizer_in_best: bool = field(default=False, metadata={"help": "also store optimizer state in the best checkpoint"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={"help": "auto = bf16 autocast on CUDA, fp32 on CPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    parallel: Literal["ddp", "fsdp"] = field(default="ddp", metadata={
        "help": "under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and optimizer "
                "state over the ranks (FSDP2, per transformer block), for models too big to replicate; one process ignores it"})
    seed: int = field(default=0, metadata={"help": "seed for init, batch order and dropout"})
    group_by_length: int = field(default=0, metadata={
        "help": "batch examples of similar length to cut padding: each epoch's shuffled order is cut into runs of N batches, "
                "each run sorted by length, and the batches shuffled (0 = off; needs a dataset with lengths)"})
    group_by_cluster: int = field(default=0, metadata={
        "help": "batch examples of the same cluster together (the dataset's `clusters`; search pairs: their repo), for harder "
                "in-batch negatives: each epoch's shuffled order is cut into runs of N batches, each run sorted by cluster (the "
                "clusters in a fresh random order each epoch), and the batches shuffled (0 = off; N = 1 keeps batches random "
                "in which examples meet, larger N makes them more alike)"})
    show_progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_size < 0 or self.max_epochs < 0 or self.max_steps < 0 or self.max_seconds < 0:
            raise ValueError("micro_batch_size, max_epochs, max_steps and max_seconds must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.group_by_length < 0 or self.group_by_cluster < 0:
            raise ValueError(f"group_by_length and group_by_cluster must be >= 0, got {self.group_by_length} and {self.group_by_cluster}")
        if self.group_by_length and self.group_by_cluster:
            raise ValueError("group_by_length and group_by_cluster each order the batches; set one of them")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        for name in ("weight_decay", "warmup_steps", "clip_value", "clip_norm", "eval_every", "log_every", "patience", "min_lr_ratio"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got beta1={self.beta1}, beta2={self.beta2}")
        if not (self.lr_decay > 0 and math.isfinite(self.lr_decay)):
            raise ValueError(f"lr_decay must be a finite number > 0, got {self.lr_decay}")


class Callback:
    """Hooks the loop calls; override what you need. `trainer.request_stop()` ends training cleanly."""

    def on_step_end(self, trainer: "Trainer", step: int, loss: float) -> None: ...

    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path, is_best: bool) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


class TrainingInterrupted(FnbodyError):
    """Raised after a SIGINT/SIGTERM (or `request_stop(interrupt=True)`) once the last checkpoint is saved."""


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based): warm-up, then the chosen schedule."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "exp-epoch":
        return cfg.lr * cfg.lr_decay ** (step // max(1, steps_per_epoch))
    span = max(1, total_steps - cfg.warmup_steps)
    progress_frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress_frac))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (possibly inside dicts/lists/tuples) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay on matrices only (not biases, norms or 1-d params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam" or cfg.weight_decay == 0:
        groups = [{"params": params, "weight_decay": 0.0}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    # The fused CUDA kernel does the whole update in one launch; it needs every param on CUDA.
    fused = bool(params) and all(p.is_cuda for p in params)
    return cls(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


class Trainer:
    """Trains any model with `compute_loss(model, batch)`, writing checkpoints and metrics to `out_dir`."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        dataset: Sequence,
        collate: Callable[[list], Any],
        compute_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
        out_dir: str | Path,
        *,
        evaluate: Callable[[torch.nn.Module], dict] | None = None,
        callbacks: Sequence[Callback] = (),
        dist_info: DistInfo | None = None,
        wrap_model: Callable[[torch.nn.Module, DistInfo], torch.nn.Module] | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise FnbodyError("training set is empty: nothing to train on")
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.collate = collate
        self.compute_loss = compute_loss
        self.evaluate_fn = evaluate
        self.callbacks = list(callbacks)
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.ddp_model = self.model
        # FSDP shards `self.model` in place (its parameters become DTensor shards); DDP wraps it.
        self.fsdp = self.dist.enabled and wrap_model is None and cfg.parallel == "fsdp"
        if self.dist.enabled:
            if wrap_model is not None:
                self.ddp_model = wrap_model(self.model, self.dist)
            elif self.fsdp:
                shard_fsdp(self.model, self.dist)
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                ids = [self.device.index] if self.device.type == "cuda" else None
                self.ddp_model = DDP(self.model, device_ids=ids)
        # After wrapping: under FSDP the optimizer must hold the sharded parameters.
        self.optimizer = make_optimizer(self.model, cfg)
        self._full_state: dict | None = None
        if cfg.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        # Batch geometry: global batch -> per-rank shard -> micro-batches.
        self.global_batch = min(cfg.batch_size, len(dataset))
        if self.global_batch % self.dist.world_size:
            raise FnbodyError(f"batch_size {self.global_batch} is not divisible by the {self.dist.world_size} processes")
        self.rank_batch = self.global_batch // self.dist.world_size
        self.micro = cfg.micro_batch_size or self.rank_batch
        self.steps_per_epoch = max(1, len(dataset) // self.global_batch)
        self.lengths = getattr(dataset, "lengths", None)  # (N,) sizes for group_by_length
        if cfg.group_by_length and self.lengths is None:
            raise FnbodyError(f"group_by_length needs a dataset with lengths; {type(dataset).__name__} has none")
        self.clusters = getattr(dataset, "clusters", None)  # (N,) cluster ids for group_by_cluster
        if cfg.group_by_cluster and self.clusters is None:
            raise FnbodyError(f"group_by_cluster needs a dataset with clusters; {type(dataset).__name__} has none")
        epoch_steps = self.steps_per_epoch * max(1, cfg.max_epochs)
        self.total_steps = min(cfg.max_steps, epoch_steps) if cfg.max_steps else epoch_steps
        # Position and bookkeeping (restored on resume).
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.evals_since_best = 0
        self._last_eval_step = -1
        self._stop = False
        self._interrupted = False

    # ----- control -------------------------------------------------------------------------
    def request_stop(self, interrupt: bool = False) -> None:
        """Finish the current step, save the last checkpoint, then stop (raising if `interrupt`)."""
        self._stop = True
        self._interrupted = self._interrupted or interrupt

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.out_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        """All rows written to metrics.jsonl so far."""
        path = self.out_dir / METRICS
        return read_jsonl(path) if path.exists() else []

    def _state(self) -> dict:
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best": self.best, "evals_since_best": self.evals_since_best,
            "world_size": self.dist.world_size, "global_batch": self.global_batch,
        }

    def save(self, is_best: bool = False) -> Path | None:
        """Write the last (and, if `is_best`, the best) checkpoint; rank 0 writes, every rank must call it."""
        path = None
        model_state = opt_state = None
        rngs = gather_objects(rng_state(), self.dist)  # each rank resumes its own dropout stream
        if self.fsdp:  # gathering the shards is collective; rank 0 receives the full tensors
            model_state, opt_state = full_state_dicts(self.model, self.optimizer)
        if self.dist.is_main:
            self._full_state = model_state
            try:
                path = save_checkpoint(self.checkpoint_dir / "last", self.model, self.optimizer, self._state(),
                                       model_state=model_state, optimizer_state=opt_state, rng_states=rngs)
                for cb in self.callbacks:
                    cb.on_checkpoint(self, path, False)
                if is_best:
                    opt = self.optimizer if self.cfg.save_optimizer_in_best else None
                    best_path = save_checkpoint(self.checkpoint_dir / "best", self.model, opt, self._state(),
                                                model_state=model_state, optimizer_state=opt_state, rng_states=rngs)
                    for cb in self.callbacks:
                        cb.on_checkpoint(self, best_path, True)
            finally:
                self._full_state = None
        barrier(self.dist)
        return path

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights of the trained model, e.g. for exporting it from a callback.

        Under FSDP the shards are gathered only around callbacks: call it on rank 0 inside
        `on_checkpoint` or `on_train_end`.
        """
        if not self.fsdp:
            return unwrap(self.model).state_dict()
        if self._full_state is None:
            raise RuntimeError("under FSDP the full weights exist only on rank 0 inside on_checkpoint/on_train_end")
        return self._full_state

    @contextlib.contextmanager
    def _unsharded(self):
        """Under FSDP: every rank gathers the full parameters and keeps them until the block ends.

        Rank 0 can then run the model alone (evaluation, sampling) without the other ranks
        joining each forward's all-gather. Collective: every rank must enter.
        """
        if not self.fsdp:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            barrier(self.dist)
            for unit in units:
                unit.reshard()
                # FSDP2's defaults: blocks free their gathered weights after forward; the root keeps them for backward.
                unit.set_reshard_after_forward(unit is not self.model, recurse=False)
            # Rank 0's evaluation forwards recorded a forward order no backward consumed; clear it so the
            # next backward prefetches alike on every rank (older torch lacks the call: the stale entry is
            # then the root, unsharded through backward, so its prefetch is a no-op).
            if hasattr(self.model, "reset_iter_state"):
                self.model.reset_iter_state()

    def resume(self) -> bool:
        """Restore the last checkpoint if there is one; returns whether it did."""
        path = self.checkpoint_dir / "last"
        if not path.exists():
            return False
        state = load_checkpoint(path, self.model, self.optimizer, rank=self.dist.rank)
        if state.get("global_batch") != self.global_batch:
            raise FnbodyError(f"{path}: checkpoint used global batch {state.get('global_batch')}, this run {self.global_batch}; resume with the same batch size")
        for key in ("step", "epoch", "batch_in_epoch", "best", "evals_since_best"):
            setattr(self, key, state.get(key, getattr(self, key)))
        # Drop metric rows logged after the checkpoint, so the resumed log reads as one run.
        rows = [r for r in self.metrics() if r.get("step", 0) <= self.step]
        if self.dist.is_main:
            with atomic_open(self.out_dir / METRICS) as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        return True

    # ----- the loop --------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        if self.cfg.group_by_length:
            order = length_grouped(order, self.lengths, self.global_batch, self.cfg.group_by_length, g)
        elif self.cfg.group_by_cluster:
            order = cluster_grouped(order, self.clusters, self.global_batch, self.cfg.group_by_cluster, g)
        return order

    def _run_eval(self) -> bool:
        """Evaluate on rank 0, log, keep the best checkpoint; returns True if training should stop early."""
        improved = False
        metrics: dict = {}
        self._last_eval_step = self.step
        if self.evaluate_fn is not None:
            with self._unsharded():
                if self.dist.is_main:
                    improved = self._evaluate_on_main()
        self.save(is_best=improved)
        stop = bool(self.cfg.patience and self.evals_since_best >= self.cfg.patience)
        if self.dist.enabled:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            stop = bool(all_reduce_mean(flag, self.dist).item() > 0)
        return stop

    def _evaluate_on_main(self) -> bool:
        """Rank 0: evaluate, log, update the best metric, call on_eval_end; returns whether it improved."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast():
            metrics = dict(self.evaluate_fn(self.model))
        self.model.train(was_training)
        improved = False
        value = metrics.get(self.cfg.best_metric)
        if value is not None and math.isfinite(value):
            better = self.best is None or (value < self.best if self.cfg.best_mode == "min" else value > self.best)
            if better:
                self.best, self.evals_since_best, improved = float(value), 0, True
            else:
                self.evals_since_best += 1
        self._log({"step": self.step, "epoch": self.epoch_float, **metrics})
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return improved

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.batch_in_epoch / self.steps_per_epoch

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, _frame):
            self.request_stop(interrupt=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    def _elapsed_everywhere(self, t0: float) -> float:
        """Seconds since `t0`, averaged over ranks so that every rank takes the same stop decision."""
        elapsed = time.perf_counter() - t0
        if self.dist.world_size > 1:
            elapsed = all_reduce_mean(torch.tensor(elapsed, device=self.device), self.dist).item()
        return elapsed

    def fit(self, resume: bool = False) -> dict:
        """Train until max_epochs/max_steps, early stopping or a stop request; returns the final state."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if self.resume() and self.dist.is_main:
                print(f"resumed from step {self.step} (epoch {self.epoch_float:.2f})", flush=True)
        elif (self.out_dir / METRICS).exists() and self.dist.is_main:
            (self.out_dir / METRICS).unlink()
        if not resume or self.step == 0:
            set_seed(self.cfg.seed + self.dist.rank)
        old_handlers = self._install_signal_handlers()
        show = self.cfg.show_progress and self.dist.is_main
        bar = progress(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=None if show else True)
        self.model.train()
        run_loss = torch.zeros((), device=self.device)
        run_n = 0
        t0 = time.perf_counter()
        examples_at_t0 = self.step * self.global_batch
        early = False
        try:
            while self.step < self.total_steps and not self._stop and not early:
                order = self._epoch_order(self.epoch)
                while self.batch_in_epoch < self.steps_per_epoch and self.step < self.total_steps:
                    b = self.batch_in_epoch
                    idx = order[b * self.global_batch:(b + 1) * self.global_batch]
                    mine = idx[self.dist.rank::self.dist.world_size].tolist()
                    lr = lr_at(self.cfg, self.step, self.total_steps, self.steps_per_epoch)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    step_loss = self._train_step(mine)
                    run_loss += step_loss
                    run_n += 1
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.batch_in_epoch >= self.steps_per_epoch:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    end_of_epoch = self.batch_in_epoch == 0
                    logged = bool(self.cfg.log_every) and (self.step % self.cfg.log_every == 0 or end_of_epoch or self.step == self.total_steps)
                    if logged:
                        mean = all_reduce_mean(run_loss / run_n, self.dist).item()
                        dt = time.perf_counter() - t0
                        rate = (self.step * self.global_batch - examples_at_t0) / max(dt, 1e-9)
                        self._log({"step": self.step, "epoch": self.epoch_float, "train_loss": mean, "lr": lr, "examples_per_s": rate})
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                        for cb in self.callbacks:
                            cb.on_step_end(self, self.step, mean)
                        run_loss.zero_()
                        run_n = 0
                    bar.update(1)
                    # One process checks the clock every step; several agree on it at log steps (a collective).
                    if self.cfg.max_seconds and (self.dist.world_size == 1 or logged) and self._elapsed_everywhere(t0) > self.cfg.max_seconds:
                        self._stop = True
                    eval_now = (self.cfg.eval_every and self.step % self.cfg.eval_every == 0) or (not self.cfg.eval_every and end_of_epoch)
                    if eval_now:
                        early = self._run_eval()
                    if self._stop or early or end_of_epoch:
                        break
                if self.epoch >= self.cfg.max_epochs and self.cfg.max_epochs:
                    break
            if self._interrupted:
                self.save()
                raise TrainingInterrupted(f"interrupted at step {self.step}; checkpoint saved in {self.checkpoint_dir / 'last'}; continue with --resume")
            # Final evaluation unless the last step just had one.
            if self.evaluate_fn is not None and self._last_eval_step != self.step:
                self._run_eval()
            else:
                self.save()
            if self.fsdp:  # collective: gather the full weights for export callbacks
                model_state = full_state_dicts(self.model, None)[0]
                self._full_state = model_state if self.dist.is_main else None
            try:
                for cb in self.callbacks:
                    cb.on_train_end(self)
            finally:
                self._full_state = None
        finally:
            bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        return self._state()

    def _train_step(self, indices: list[int]) -> torch.Tensor:
        """One optimizer step over this rank's share of the global batch (with accumulation)."""
        chunks = [indices[i:i + self.micro] for i in range(0, len(indices), self.micro)]
        total = len(indices)
        loss_sum = torch.zeros((), device=self.device)
        for i, chunk in enumerate(chunks):
            batch = to_device(self.collate([self.dataset[j] for j in chunk]), self.device)
            sync = i == len(chunks) - 1
            ctx = self.ddp_model.no_sync() if (self.dist.enabled and not sync and hasattr(self.ddp_model, "no_sync")) else contextlib.nullcontext()
            if self.fsdp:  # FSDP2: accumulate unsharded grads locally; reduce-scatter on the last micro-batch
                self.model.set_requires_gradient_sync(sync)
            with ctx:
                with self.autocast():
                    loss = self.compute_loss(self.ddp_model, batch)
                (loss * (len(chunk) / total)).backward()
            loss_sum += loss.detach().float() * (len(chunk) / total)
        if self.cfg.clip_value:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.clip_value)
        if self.cfg.clip_norm:
            clip_grad_norm(self.model.parameters(), self.cfg.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum


def length_grouped(order: torch.Tensor, lengths: torch.Tensor, batch: int, runs_of: int, g: torch.Generator) -> torch.Tensor:
    """`order` with each run of `runs_of` batches sorted by length (longest first) and its whole batches shuffled.

    The batches hold examples of similar length, so padding (and CPU time) shrinks, while which examples meet in a
    batch stays random within a run. The tail after the last whole batch keeps its place (the loop drops it).
    """
    return _run_sorted(order, torch.as_tensor(lengths), batch, runs_of, g, descending=True)


def cluster_grouped(order: torch.Tensor, clusters: torch.Tensor, batch: int, runs_of: int, g: torch.Generator) -> torch.Tensor:
    """`order` with each run of `runs_of` batches sorted by cluster and its whole batches shuffled.

    A batch then holds few clusters (for search pairs: few repos), so a contrastive loss's in-batch negatives are harder
    than random ones. The clusters are ranked in a random order drawn from `g`, so which small clusters share a batch
    changes from epoch to epoch; within a cluster the run's random order stays. The tail keeps its place.
    """
    clusters = torch.as_tensor(clusters, dtype=torch.long)
    rank = torch.randperm(int(clusters.max()) + 1 if len(clusters) else 1, generator=g)
    return _run_sorted(order, rank[clusters], batch, runs_of, g, descending=False)


def _run_sorted(order: torch.Tensor, keys: torch.Tensor, batch: int, runs_of: int, g: torch.Generator, descending: bool) -> torch.Tensor:
    """Each run of `runs_of` batches of `order` stably sorted by `keys`, then the whole batches shuffled."""
    run = batch * runs_of
    sorted_runs = [chunk[torch.argsort(keys[chunk], descending=descending, stable=True)] for chunk in order.split(run)]
    grouped = torch.cat(sorted_runs)
    n_whole = len(order) // batch * batch
    batches = grouped[:n_whole].view(-1, batch)
    shuffled = batches[torch.randperm(len(batches), generator=g)].reshape(-1)
    return torch.cat([shuffled, grouped[n_whole:]])


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm in place; sharded (DTensor) gradients get the norm over all shards."""
    params = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(total, "full_tensor"):  # a DTensor: make the norm a plain tensor that every rank agrees on
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics.jsonl rows of a run folder."""
    path = Path(run_dir) / METRICS
    return read_jsonl(path) if path.exists() else []

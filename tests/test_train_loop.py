"""The shared training loop: learning, exact resume, interruption, schedules, and DDP on gloo."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fnbody.train.loop import Callback, Trainer, TrainConfig, TrainingInterrupted, lr_at, read_metrics
from conftest import torchrun


class TinyRegressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))

    def forward(self, x, y):
        pred = self.net(x).squeeze(-1)
        return pred, torch.nn.functional.mse_loss(pred, y)


def make_data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return [(x[i], y[i]) for i in range(n)]


def collate(items):
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def loss_fn(model, batch):
    return model(*batch)[1]


def make_trainer(out, cfg, evaluate=None, callbacks=()):
    torch.manual_seed(cfg.seed)
    data = make_data()
    return Trainer(TinyRegressor(), cfg, data, collate, loss_fn, out, evaluate=evaluate, callbacks=callbacks)


def eval_fn(model):
    x, y = collate(make_data())
    return {"valid_loss": float(model(x, y)[1])}


def train_losses(out):
    return [r["train_loss"] for r in read_metrics(out) if "train_loss" in r]


def test_loss_goes_down_and_best_checkpoint_written(tmp_path):
    cfg = TrainConfig(batch_size=16, max_epochs=30, lr=1e-2, log_every=4, show_progress=False)
    trainer = make_trainer(tmp_path, cfg, evaluate=eval_fn)
    trainer.fit()
    losses = train_losses(tmp_path)
    assert losses[-1] < 0.2 * losses[0]
    assert (tmp_path / "checkpoints" / "best" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "last" / "trainer_state.json").exists()
    assert trainer.step == 30 * 4


class StopAt(Callback):
    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, step, loss):
        if step == self.at:
            trainer.request_stop(interrupt=True)


def test_interrupted_and_resumed_run_matches_straight_run(tmp_path):
    cfg = TrainConfig(batch_size=8, max_epochs=3, lr=5e-3, log_every=1, show_progress=False, seed=3)
    make_trainer(tmp_path / "straight", cfg, evaluate=eval_fn).fit()
    with pytest.raises(TrainingInterrupted, match="--resume"):
        make_trainer(tmp_path / "split", cfg, evaluate=eval_fn, callbacks=[StopAt(11)]).fit()
    # A fresh process would rebuild the model from scratch; resume must restore everything else.
    make_trainer(tmp_path / "split", cfg, evaluate=eval_fn).fit(resume=True)
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "split")
    assert len(a) == len(b) == 24
    assert a == pytest.approx(b, abs=1e-7)


def test_early_stopping_respects_patience(tmp_path):
    cfg = TrainConfig(batch_size=16, max_epochs=50, lr=1e-3, patience=2, show_progress=False)
    calls = iter(range(100))
    trainer = make_trainer(tmp_path, cfg, evaluate=lambda m: {"valid_loss": 1.0 + next(calls)})  # always worse
    trainer.fit()
    assert trainer.epoch == 3  # first eval sets best, two more without improvement stop it


def slow_loss(model, batch):
    import time

    time.sleep(0.02)
    return loss_fn(model, batch)


def test_max_seconds_stops_cleanly_with_a_final_evaluation(tmp_path):
    # log_every far beyond the run: a single process checks the clock every step, not only at log steps
    cfg = TrainConfig(batch_size=8, max_epochs=1000, lr=1e-3, log_every=1000, max_seconds=0.3, show_progress=False)
    torch.manual_seed(0)
    trainer = Trainer(TinyRegressor(), cfg, make_data(), collate, slow_loss, tmp_path, evaluate=eval_fn)
    trainer.fit()
    assert 3 <= trainer.step < 100  # stopped by the clock, long before 1000 epochs
    assert "valid_loss" in read_metrics(tmp_path)[-1]  # the final evaluation still ran
    assert (tmp_path / "checkpoints" / "last" / "trainer_state.json").exists()
    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(max_seconds=-1)


def test_schedules():
    cfg = TrainConfig(lr=1.0, schedule="exp-epoch", lr_decay=0.5)
    assert lr_at(cfg, 0, 100, 10) == 1.0 and lr_at(cfg, 25, 100, 10) == 0.25
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.0)
    assert lr_at(cfg, 0, 110, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 110, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60, 110, 10) == pytest.approx(0.5)
    assert lr_at(cfg, 110, 110, 10) == pytest.approx(0.0)


def test_length_grouped_batches_sort_within_runs_and_keep_every_example():
    from fnbody.train.loop import length_grouped

    order = torch.randperm(13, generator=torch.Generator().manual_seed(3))
    lengths = torch.arange(13) * 10  # example i has length 10 * i
    out = length_grouped(order, lengths, batch=2, runs_of=3, g=torch.Generator().manual_seed(4))
    assert sorted(out.tolist()) == list(range(13)) and out[-1] == order[-1]  # a permutation; the tail keeps its place
    # Each run of 3 batches (6 examples of `order`) is sorted longest first and cut into batches; the batches are shuffled.
    expected = set()
    for run in order[:12].view(2, 6):
        ranked = sorted(run.tolist(), reverse=True)
        expected |= {tuple(ranked[i:i + 2]) for i in range(0, 6, 2)}
    got = [tuple(b) for b in out[:12].view(6, 2).tolist()]
    assert set(got) == expected
    again = length_grouped(order, lengths, batch=2, runs_of=3, g=torch.Generator().manual_seed(4))
    assert torch.equal(out, again)  # seeded: resuming an epoch rebuilds the same order


def test_group_by_length_needs_lengths(tmp_path):
    from fnbody.errors import FnbodyError

    with pytest.raises(FnbodyError, match="group_by_length needs a dataset with lengths"):
        make_trainer(tmp_path, TrainConfig(group_by_length=4, device="cpu"))

    class Sized(list):
        lengths = torch.arange(64)

    trainer = Trainer(TinyRegressor(), TrainConfig(batch_size=8, group_by_length=2, device="cpu"), Sized(make_data()), collate,
                      loss_fn, tmp_path / "g")
    order = trainer._epoch_order(0)
    batches = order.view(-1, 8)
    assert sorted(order.tolist()) == list(range(64))
    assert all(b.tolist() == sorted(b.tolist(), reverse=True) for b in batches)  # length = index: each batch sorted longest first
    plain = Trainer(TinyRegressor(), TrainConfig(batch_size=8, device="cpu"), Sized(make_data()), collate, loss_fn,
                    tmp_path / "p")._epoch_order(0).view(-1, 8)
    spread = lambda b: (b.max(1).values - b.min(1).values).float().mean()  # noqa: E731 (length = index)
    assert spread(batches) < 0.7 * spread(plain)  # closer in length than 8 random picks


def test_cluster_grouped_batches_hold_few_clusters_and_keep_every_example():
    from fnbody.train.loop import cluster_grouped

    clusters = torch.arange(48) % 6  # six clusters of eight examples
    order = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    out = cluster_grouped(order, clusters, batch=8, runs_of=6, g=torch.Generator().manual_seed(2))
    assert sorted(out.tolist()) == list(range(48))  # a permutation
    # One run covers the epoch, so every batch of 8 is one whole cluster (random batches: almost never).
    assert all(len(set(clusters[b].tolist())) == 1 for b in out.view(6, 8))
    rank = {int(x): i for i, x in enumerate(order)}
    for b in out.view(6, 8):  # within a cluster, the examples keep the shuffled order's sequence (stable sort)
        assert [rank[int(x)] for x in b] == sorted(rank[int(x)] for x in b)
    assert torch.equal(out, cluster_grouped(order, clusters, batch=8, runs_of=6, g=torch.Generator().manual_seed(2)))
    other = cluster_grouped(order, clusters, batch=8, runs_of=6, g=torch.Generator().manual_seed(3))
    assert not torch.equal(out, other)  # another epoch's draw: another cluster order and batch order
    # runs_of=1: each batch is only sorted within itself, so it holds the same examples as the plain order's batch.
    one = cluster_grouped(order, clusters, batch=8, runs_of=1, g=torch.Generator().manual_seed(2))
    assert {frozenset(b.tolist()) for b in one.view(6, 8)} == {frozenset(b.tolist()) for b in order.view(6, 8)}


def test_group_by_cluster_needs_clusters_and_excludes_group_by_length(tmp_path):
    from fnbody.errors import FnbodyError

    with pytest.raises(FnbodyError, match="group_by_cluster needs a dataset with clusters"):
        make_trainer(tmp_path, TrainConfig(group_by_cluster=4, device="cpu"))
    with pytest.raises(ValueError, match="set one of them"):
        TrainConfig(group_by_cluster=2, group_by_length=2)
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig(group_by_cluster=-1)

    class Clustered(list):
        clusters = torch.arange(64) // 16  # four clusters of 16, in index order

    trainer = Trainer(TinyRegressor(), TrainConfig(batch_size=8, group_by_cluster=8, device="cpu"), Clustered(make_data()),
                      collate, loss_fn, tmp_path / "c")
    order = trainer._epoch_order(0)
    assert sorted(order.tolist()) == list(range(64))
    assert all(len(set((b // 16).tolist())) == 1 for b in order.view(-1, 8))  # every batch from one cluster


def test_gradient_accumulation_matches_full_batch(tmp_path):
    base = dict(batch_size=16, max_epochs=2, lr=1e-2, log_every=1, show_progress=False)
    make_trainer(tmp_path / "full", TrainConfig(**base)).fit()
    make_trainer(tmp_path / "accum", TrainConfig(**base, micro_batch_size=4)).fit()
    # Dropout draws differ in count per micro-batch, so compare loosely; the batch order is identical.
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "accum")
    assert len(a) == len(b)
    assert a[-1] == pytest.approx(b[-1], rel=0.25)


DDP_SCRIPT = textwrap.dedent('''
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train_loop import make_trainer
    from fnbody.train.loop import TrainConfig
    cfg = TrainConfig(batch_size=16, max_epochs=3, lr=1e-2, log_every=1, show_progress=False, device="cpu")
    t = make_trainer(sys.argv[1], cfg)
    for m in t.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    t.fit()
''')


def test_ddp_gloo_two_processes_match_one(tmp_path):
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=tests_dir))
    p = torchrun([script, tmp_path / "ddp"], tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    subprocess.run([sys.executable, str(script), str(tmp_path / "single")], check=True, capture_output=True, timeout=120)
    a, b = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["world_size"] == 2


def test_resolve_device_names_a_bad_device_string():
    from fnbody.errors import FnbodyError
    from fnbody.train.distributed import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(FnbodyError, match="'bogus' is not a device"):
        resolve_device("bogus")


@pytest.mark.parametrize("field,value,needle", [
    ("max_epochs", 0, "max_epochs must be >= 1"), ("warmup_steps", -5, "warmup_steps must be"), ("clip_norm", -1.0, "clip_norm must be"),
    ("clip_value", float("nan"), "clip_value must be"), ("eval_every", -1, "eval_every must be"), ("beta1", 2.0, "Adam betas"),
    ("lr_decay", -1.0, "lr_decay must be"), ("lr_decay", 0.0, "lr_decay must be"), ("weight_decay", -0.1, "weight_decay must be"),
])
def test_train_config_refuses_values_that_would_train_wrongly(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**{field: value})


def test_run_folder_checks_before_anything_is_written(tmp_path, capsys):
    from fnbody.config import prepare_run_dir, write_run_info
    from fnbody.errors import FnbodyError

    assert prepare_run_dir(tmp_path / "new", resume=False, kind="lm") is False
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FnbodyError, match="a file, not a folder"):
        prepare_run_dir(tmp_path / "afile", resume=False, kind="lm")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")  # e.g. a corpus folder
    with pytest.raises(FnbodyError, match="a folder with other files in it"):
        prepare_run_dir(other, resume=False, kind="lm")
    crnn = tmp_path / "crnn"
    write_run_info(crnn, "char-rnn", {"model": {}})
    with pytest.raises(FnbodyError, match="a 'char-rnn' run, not a 'lm' run"):
        prepare_run_dir(crnn, resume=True, kind="lm")
    finished = tmp_path / "finished"
    write_run_info(finished, "lm", {"model": {}})
    (finished / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(FnbodyError, match="holds a finished lm run"):
        prepare_run_dir(finished, resume=False, kind="lm")
    assert (finished / "model.safetensors").read_bytes() == b"weights"
    started = tmp_path / "started"  # died before its first checkpoint: --resume starts it again, and says so
    write_run_info(started, "lm", {"model": {}})
    assert prepare_run_dir(started, resume=True, kind="lm") is False
    assert "nothing to resume" in capsys.readouterr().err

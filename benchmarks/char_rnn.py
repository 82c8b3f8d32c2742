"""Char-RNN speed: training chars/s through the shared Trainer vs a plain PyTorch loop, and generation chars/s.

Both training loops run in this process on the same text (real CodeSearchNet functions from
../shared/data/csn-python-sample), with the report's sizes: embedding 128 -> LSTM 128 x 2 layers ->
linear, batch 50 windows of 50 chars, Adam 0.002, gradients clipped by value at 5. Rounds
alternate (plain, trainer, plain, trainer, ...) so machine load hits both alike; the figure is
the median round. The trainer's time includes everything `fit()` does (batching, logging, its
final checkpoint); "steps only" is the loop's own examples/s from metrics.jsonl.

    .venv/bin/python benchmarks/char_rnn.py [--steps 40] [--rounds 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

os.environ.setdefault("FNBODY_NO_PROGRESS", "1")

from fnbody.commands.char_rnn import CharWindows, collate_windows, window_loss  # noqa: E402
from fnbody.generate.base import GenerationConfig  # noqa: E402
from fnbody.generate.char_rnn import CharRNNGenerator  # noqa: E402
from fnbody.io import read_jsonl  # noqa: E402
from fnbody.models.char_rnn import CharRNN, CharRNNConfig  # noqa: E402
from fnbody.tokens.chars import CharVocab  # noqa: E402
from fnbody.train.loop import Trainer, TrainConfig, read_metrics  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "csn-python-sample"
B, T, H, E, LAYERS, LR, CLIP = 50, 50, 128, 128, 2, 0.002, 5.0


def load_text() -> tuple[list[dict], str]:
    rows = []
    for name in ("python_test_sample.jsonl.gz", "python_valid_sample.jsonl.gz"):
        rows += read_jsonl(SAMPLE / name)
    return rows, "".join(r["code"] + "\x1e" for r in rows)


class PlainCharLSTM(nn.Module):
    """The minimal char-LSTM anyone would write: embedding, nn.LSTM, linear."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, E)
        self.lstm = nn.LSTM(E, H, LAYERS, batch_first=True)
        self.out = nn.Linear(H, vocab_size)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(h)


def plain_round(ids: torch.Tensor, vocab_size: int, steps: int, seed: int) -> float:
    """Chars/s of a bare loop: random window starts, forward, CE, backward, clip, Adam."""
    torch.manual_seed(seed)
    model = PlainCharLSTM(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    windows = ids[: (len(ids) - 1) // T * T + 1]
    n_windows = (len(windows) - 1) // T
    t0 = time.perf_counter()
    order = torch.randperm(n_windows)
    for s in range(steps):
        starts = order[(s * B) % n_windows:][:B] * T
        batch = torch.stack([windows[i:i + T + 1] for i in starts.tolist()])  # (B, T + 1)
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), CLIP)
        opt.step()
    loss.item()
    return steps * B * T / (time.perf_counter() - t0)


def trainer_round(ids: torch.Tensor, vocab_size: int, steps: int, seed: int, out: Path) -> tuple[float, float, CharRNN]:
    """Chars/s of the same model and optimisation through fnbody's Trainer (whole fit(), and steps only)."""
    torch.manual_seed(seed)
    model = CharRNN(CharRNNConfig(vocab_size=vocab_size, cell="lstm", hidden=H, layers=LAYERS, embedding_dim=E))
    cfg = TrainConfig(batch_size=B, max_epochs=1000, max_steps=steps, optimizer="adam", lr=LR, schedule="exp-epoch", lr_decay=0.97,
                      clip_value=CLIP, log_every=10, show_progress=False, device="cpu", seed=seed)
    trainer = Trainer(model, cfg, CharWindows(ids, T), collate_windows, window_loss, out)
    t0 = time.perf_counter()
    trainer.fit()
    total = steps * B * T / (time.perf_counter() - t0)
    rate = [r["examples_per_s"] for r in read_metrics(out) if "examples_per_s" in r][-1] * T
    return total, rate, model


def generation_rates(model: CharRNN, vocab: CharVocab, rows: list[dict]) -> dict:
    """Chars/s of raw decoding (model.generate) at batch 1 and 8, and of the Generator with stopping."""
    model.eval()
    res = {}
    for bs in (1, 8):
        idx = torch.from_numpy(vocab.encode("\x1edef f(x):\n")).repeat(bs, 1)
        t0 = time.perf_counter()
        model.generate(idx, 256, temperature=1.0, top_k=0)
        res[f"raw_b{bs}"] = bs * 256 / (time.perf_counter() - t0)
    gen = CharRNNGenerator(model, vocab)
    prompts = [r["code"][: r["code"].find('"""', r["code"].find('"""') + 3) + 3] + "\n" for r in rows if r["code"].count('"""') >= 2][:16]
    cfg = GenerationConfig(temperature=0.8, top_k=20, max_new_tokens=256, batch_size=8)
    t0 = time.perf_counter()
    outs = gen.generate(prompts, cfg)
    dt = time.perf_counter() - t0
    res["generator_b8_chars"] = sum(o[0].num_tokens for o in outs)
    res["generator_b8"] = res["generator_b8_chars"] / dt
    t0 = time.perf_counter()
    n = len("".join(gen.stream(prompts[0], GenerationConfig(temperature=0.8, top_k=20, max_new_tokens=256))))
    res["stream_b1"] = n / (time.perf_counter() - t0)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, text = load_text()
    vocab = CharVocab.build([text.replace("\x1e", "")])
    ids = torch.from_numpy(vocab.encode(text))
    print(f"text: {len(ids):,} chars, vocab {len(vocab)}; LSTM {H}x{LAYERS}, batch {B}x{T}; threads {torch.get_num_threads()}; "
          f"{args.rounds} rounds x {args.steps} steps", flush=True)
    plain, fit_total, fit_steps = [], [], []
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        plain_round(ids, len(vocab), 3, 0)  # warm-up (allocator, kernels)
        for r in range(args.rounds):
            plain.append(plain_round(ids, len(vocab), args.steps, r))
            total, steps_only, model = trainer_round(ids, len(vocab), args.steps, r, Path(tmp) / f"run{r}")
            fit_total.append(total)
            fit_steps.append(steps_only)
            print(f"round {r}: plain {plain[-1]:,.0f} chars/s | trainer fit() {total:,.0f} chars/s (steps only {steps_only:,.0f})", flush=True)
    p, t, s = statistics.median(plain), statistics.median(fit_total), statistics.median(fit_steps)
    print(f"training  plain loop {p:,.0f} chars/s | fnbody Trainer {t:,.0f} chars/s (whole fit) / {s:,.0f} (steps only) | "
          f"ratio trainer/plain {t / p:.2f}x (whole fit), {s / p:.2f}x (steps only)  [target >= 1x]")
    g = generation_rates(model, vocab, rows)
    print(f"generation raw model.generate: {g['raw_b1']:,.0f} chars/s (batch 1), {g['raw_b8']:,.0f} chars/s (batch 8); "
          f"CharRNNGenerator batch 8 with stopping: {g['generator_b8']:,.0f} chars/s ({g['generator_b8_chars']} chars); "
          f"stream: {g['stream_b1']:,.0f} chars/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

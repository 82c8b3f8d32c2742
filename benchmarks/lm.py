"""Transformer speed on this machine: fnbody's generator and training loop vs plain transformers.

(a) generation tokens/s for SmolLM2-135M at batch 1 and batch 16: `LMGenerator` against
    `model.generate` with a stopping criterion that checks for the end of the function (decoding
    the whole sequence at each step, the plain way). Both decode exactly N new tokens per row
    (the generator with `ignore_end=True`, plain generate with `min_new_tokens=N`), still doing
    their end-of-function checks, so the work is equal.
(b) training tokens/s: fnbody's `Trainer` (fnbody train lm's loss and data) against a plain
    loop (`model(input_ids, labels=...)`, backward, AdamW step) on the same blocks.

(c) `--gpu` (run by benchmarks/gpu.sh): GPT-2 124M (scratch:gpt2-124m shape, vocab 50304) at
    sequence 1024 on CUDA: training tokens/s and MFU through fnbody's Trainer (bf16 autocast,
    torch.compile) and through a plain compiled loop with fused AdamW; generation tokens/s at
    batch 1 and 32 against plain `model.generate`. `--smoke` shrinks everything to run on a CPU.

Run: .venv/bin/python benchmarks/lm.py [--model smollm2|DIR] [--gen-tokens 48] [--train-steps 3] [--threads N]
     .venv/bin/python benchmarks/lm.py --gpu [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

PROMPTS = [
    'def add(a, b):\n    """Return the sum of a and b."""\n',
    'def read_lines(path):\n    """Read a text file and return its stripped lines."""\n',
    'def count_words(text):\n    """Count how many words appear in a text string."""\n',
    'def merge_dicts(a, b):\n    """Merge two dictionaries into a new one, b winning."""\n',
]


def load(model_spec: str):
    from fnbody.models.transformer import convert_gguf, load_hf_folder, smollm2_gguf

    folder = convert_gguf(smollm2_gguf()) if model_spec == "smollm2" else model_spec
    model, tok = load_hf_folder(folder)
    return model.eval(), tok


def plain_generate_rate(model, tok, prompts: list[str], n_new: int) -> float:
    """Tokens/s of HF generate with a stopping criterion that decodes everything each step."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    from fnbody.generate.stopping import truncate_body

    class FunctionEnd(StoppingCriteria):
        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores, **kw):
            done = [truncate_body(p, tok.decode(row[self.start:], skip_special_tokens=True))[1] for p, row in zip(prompts, input_ids)]
            # The check runs (its cost is what we measure); stopping is left to max/min_new_tokens so the work is equal.
            return torch.zeros(len(done), dtype=torch.bool)

    tok.padding_side = "left"
    enc = tok([tok.eos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id,
                             stopping_criteria=StoppingCriteriaList([FunctionEnd(enc["input_ids"].shape[1])]))
    dt = time.perf_counter() - t
    assert out.shape[1] - enc["input_ids"].shape[1] == n_new
    return len(prompts) * n_new / dt


def fnbody_generate_rate(model, tok, prompts: list[str], n_new: int) -> float:
    """Tokens/s of `LMGenerator` decoding exactly `n_new` tokens per prompt (end checks still run)."""
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import LMGenerator

    gen = LMGenerator(model, tok, name="bench")
    t = time.perf_counter()
    gen.generate(prompts, GenerationConfig(max_new_tokens=n_new, batch_size=len(prompts)), ignore_end=True)
    return len(prompts) * n_new / (time.perf_counter() - t)


def training_rates(model, tok, steps: int, batch: int, block: int) -> tuple[float, float]:
    """(fnbody Trainer tokens/s, plain loop tokens/s) over `steps` timed steps after one warm-up step each."""
    import copy

    import numpy as np

    from fnbody.train.lm_data import PackedBlocks, collate_blocks, lm_loss, tokenize_functions
    from fnbody.train.loop import Callback, TrainConfig, Trainer

    records = [{"prompt": p, "body": "    result = []\n    for x in range(10):\n        result.append(x * 2)\n    return result\n"} for p in PROMPTS] * 40
    ids, mask = tokenize_functions(records, tok, desc="bench tokens")
    blocks = PackedBlocks(ids, mask, block)
    assert len(blocks) >= batch * (steps + 1), "not enough blocks"

    # Plain loop: the textbook transformers fine-tuning step.
    plain = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-5)
    times = []
    for s in range(steps + 1):
        x, _ = collate_blocks([blocks[i] for i in range(s * batch, (s + 1) * batch)])
        t = time.perf_counter()
        loss = plain(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    plain_rate = batch * block / statistics.median(times[1:])
    del plain, opt

    stamps = []

    class Clock(Callback):
        def on_step_end(self, trainer, step, loss):
            stamps.append(time.perf_counter())

    ours = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(batch_size=batch, max_steps=steps + 1, lr=1e-5, log_every=1, show_progress=False, device="cpu",
                          weight_decay=0.1, clip_norm=1.0, warmup_steps=1)
        trainer = Trainer(ours, cfg, blocks, collate_blocks, lm_loss, out, callbacks=[Clock()])
        stamps.append(time.perf_counter())
        trainer.fit()
    step_times = np.diff(stamps)[1:steps + 1]
    return batch * block / float(np.median(step_times)), plain_rate


# Dense bf16 peak TFLOP/s by card name (no sparsity), for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "4090": 165.0}


def gpu_main(smoke: bool) -> int:
    """GPT-2 124M training MFU and generation speed on one GPU (or a tiny CPU smoke run)."""
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import LMGenerator
    from fnbody.models.transformer import SCRATCH_SIZES
    from fnbody.train.lm_data import PackedBlocks, collate_blocks, lm_loss
    from fnbody.train.loop import Callback, TrainConfig, Trainer

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    peak = float(os.environ.get("GPU_PEAK_TFLOPS", 0)) or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    shape = dict(SCRATCH_SIZES["gpt2-124m"]) if not smoke else dict(n_layer=2, n_head=2, n_embd=64, n_positions=128)
    T = shape["n_positions"]
    vocab = 50304 if not smoke else 512
    micro, accum, steps = (16, 2, int(os.environ.get("GPU_SH_STEPS", 30))) if not smoke else (2, 2, 3)
    print(f"device: {name}; peak bf16 {peak or 'unknown'} TFLOP/s; torch {torch.__version__}; model GPT-2 {shape}, vocab {vocab}, seq {T}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True

    def model_factory():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **shape))

    n_params = sum(p.numel() for p in model_factory().parameters())
    # nanoGPT's estimate: 6N per token for the matmuls plus 12*L*T*C for attention scores.
    flops_per_token = 6 * n_params + 12 * shape["n_layer"] * shape["n_embd"] * T
    rng = np.random.default_rng(0)
    n_blocks = micro * accum * (steps + 5)
    blocks = PackedBlocks(rng.integers(0, vocab, size=n_blocks * T + 1, dtype=np.int32), np.ones(n_blocks * T + 1, np.uint8), T)
    tokens_per_step = micro * accum * T

    def report(label, step_times):
        dt = float(np.median(step_times))
        rate = tokens_per_step / dt
        mfu = f"{100 * rate * flops_per_token / (peak * 1e12):.1f}%" if peak else "n/a"
        print(f"(c) training {label}: {rate:,.0f} tok/s, MFU {mfu} (batch {micro}x{accum}x{T}, median of {len(step_times)} steps)", flush=True)
        return rate

    # fnbody's Trainer: bf16 autocast on CUDA, torch.compile, AdamW.
    stamps = []

    class Clock(Callback):
        def on_step_end(self, trainer, step, loss):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(batch_size=micro * accum, micro_batch_size=micro, max_steps=steps + 3, lr=6e-4, weight_decay=0.1,
                          clip_norm=1.0, warmup_steps=2, log_every=1, show_progress=False, device=str(device),
                          precision="bf16" if cuda else "fp32", compile=cuda)
        trainer = Trainer(model_factory(), cfg, blocks, collate_blocks, lm_loss, out, callbacks=[Clock()])
        trainer.fit()
    ours = report("fnbody Trainer (bf16, compile, AdamW)", np.diff(stamps)[2:])

    # Plain loop: compiled model, bf16 autocast, fused AdamW, HF's own loss.
    model = model_factory().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=cuda)
    step_fn = torch.compile(model) if cuda else model
    times = []
    for s in range(steps + 3):
        t = time.perf_counter()
        for a in range(accum):
            i0 = (s * accum + a) * micro
            x, _ = collate_blocks([blocks[i] for i in range(i0, i0 + micro)])
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = step_fn(input_ids=x, labels=x).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    plain = report("plain loop (bf16, compile, fused AdamW)", times[3:])
    print(f"(c) training fnbody/plain: x{ours / plain:.2f}", flush=True)
    del model, opt, step_fn, trainer

    # Generation: bf16 weights on CUDA, exactly N new tokens per row for both paths.
    model = model_factory().to(device, dtype=torch.bfloat16 if cuda else torch.float32).eval()
    from fnbody.tokens.byte_bpe import train_byte_bpe

    tok = train_byte_bpe(PROMPTS * 20, vocab_size=300, min_frequency=1)  # any tokenizer: ids < vocab, speed only
    n_new = 128 if not smoke else 8
    gen = LMGenerator(model, tok, name="bench")
    gen.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=4), ignore_end=True)  # warm-up
    for bsz in (1, 32):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bsz)]
        plain = plain_generate_rate(model, tok, prompts, n_new)
        if cuda:
            torch.cuda.synchronize()
        ours = fnbody_generate_rate(model, tok, prompts, n_new)
        print(f"(c) generation batch {bsz:2d}: plain generate {plain:8.1f} tok/s | fnbody {ours:8.1f} tok/s | x{ours / plain:.2f}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 or an HF folder")
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--gpu", action="store_true", help="the GPU benchmark (GPT-2 124M), see benchmarks/gpu.sh")
    ap.add_argument("--smoke", action="store_true", help="with --gpu: tiny sizes on CPU, to test the script")
    args = ap.parse_args()
    if args.gpu:
        return gpu_main(args.smoke)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; "
          f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, fp32)", flush=True)
    import copy

    from fnbody.generate.lm import quantize_int8

    variants = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16), "int8": quantize_int8(model)}
    for m in variants.values():
        fnbody_generate_rate(m, tok, PROMPTS[:1], 4)  # warm-up (first-call allocations)
    for bsz in (1, 16):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bsz)]
        plain = plain_generate_rate(model, tok, prompts, args.gen_tokens)
        line = f"(a) generation batch {bsz:2d}: plain generate fp32 {plain:6.1f} tok/s"
        for name, m in variants.items():
            ours = fnbody_generate_rate(m, tok, prompts, args.gen_tokens)
            line += f" | fnbody {name} {ours:6.1f} (x{ours / plain:.2f})"
        print(line, flush=True)
    del variants
    ours_t, plain_t = training_rates(model, tok, args.train_steps, args.train_batch, args.block)
    print(f"(b) training batch {args.train_batch}x{args.block}: plain loop {plain_t:7.1f} tok/s | fnbody Trainer {ours_t:7.1f} tok/s | x{ours_t / plain_t:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

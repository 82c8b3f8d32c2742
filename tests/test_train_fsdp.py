"""FSDP2 in the shared loop (gloo, 2 CPU processes): same curve as one process, exact resume, one checkpoint format."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fnbody.train.checkpoint import load_checkpoint
from fnbody.train.loop import Trainer, TrainConfig, make_optimizer, read_metrics
from conftest import torchrun
from test_train_loop import StopAt
from test_train_loop import train_losses as losses

TESTS = str(Path(__file__).parent)


def tiny_gpt2(dropout=0.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=dropout, embd_pdrop=dropout,
                     attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def token_data(n=32):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 64, (16,), generator=g) for _ in range(n)]


def lm_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


def evaluate(model):
    batch = torch.stack(token_data(8))
    with torch.no_grad():
        return {"valid_loss": float(lm_loss(model, batch))}


def gpt2_config(**kw):
    # micro_batch_size 2 makes each rank accumulate over 2 micro-batches; clip_norm 0.5 is below the
    # early gradient norms, so a norm computed over one shard only would change the curve.
    base = dict(batch_size=8, micro_batch_size=2, max_epochs=3, lr=1e-2, weight_decay=0.1, clip_norm=0.5, warmup_steps=2,
                eval_every=4, log_every=1, show_progress=False, device="cpu", parallel="fsdp")
    return TrainConfig(**{**base, **kw})


def gpt2_trainer(out, cfg, callbacks=(), dropout=0.0):
    return Trainer(tiny_gpt2(dropout), cfg, token_data(), torch.stack, lm_loss, out, evaluate=evaluate, callbacks=callbacks)


TRAINER_SCRIPT = textwrap.dedent('''
    import shutil, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train_fsdp import StopAt, gpt2_config, gpt2_trainer
    from fnbody.train.distributed import init_distributed
    from fnbody.train.loop import TrainingInterrupted
    out = Path(sys.argv[1])
    dist = init_distributed("cpu")
    t = gpt2_trainer(out / "straight", gpt2_config())
    assert t.fsdp and type(t.model.transformer.h[0]).__name__.startswith("FSDP"), type(t.model.transformer.h[0])
    t.fit()
    try:
        gpt2_trainer(out / "split", gpt2_config(), callbacks=[StopAt(6)]).fit()
        raise SystemExit("not interrupted")
    except TrainingInterrupted:
        pass
    if dist.is_main:  # keep the interrupted checkpoint: a single process resumes from it too
        shutil.copytree(out / "split", out / "split-copy")
    gpt2_trainer(out / "split", gpt2_config()).fit(resume=True)
    # With dropout each rank draws its own masks: resume must give every rank back its own generator.
    gpt2_trainer(out / "drop", gpt2_config(), dropout=0.2).fit()
    try:
        gpt2_trainer(out / "drop-split", gpt2_config(), callbacks=[StopAt(6)], dropout=0.2).fit()
        raise SystemExit("not interrupted")
    except TrainingInterrupted:
        pass
    gpt2_trainer(out / "drop-split", gpt2_config(), dropout=0.2).fit(resume=True)
''')


def run(cmd, **env):
    p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


def run_torchrun(args, tmp_path, **env):
    p = torchrun(args, tmp_path, **env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


def test_fsdp_trainer_matches_one_process_resumes_exactly_and_loads_alone(tmp_path):
    script = tmp_path / "fsdp_train.py"
    script.write_text(TRAINER_SCRIPT.format(tests=TESTS))
    run_torchrun([script, tmp_path], tmp_path)
    torch.set_num_threads(1)
    single = gpt2_trainer(tmp_path / "single", gpt2_config())
    assert not single.fsdp  # one process: parallel=fsdp is a no-op
    single.fit()

    # Same global batch, same curve (only the float summation order differs).
    a, b = losses(tmp_path / "single"), losses(tmp_path / "straight")
    assert len(a) == len(b) == 12
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    va = [r["valid_loss"] for r in read_metrics(tmp_path / "single") if "valid_loss" in r]
    vb = [r["valid_loss"] for r in read_metrics(tmp_path / "straight") if "valid_loss" in r]
    assert len(va) == len(vb) == 3 and vb == pytest.approx(va, rel=1e-4)
    # Interrupted at step 6 and resumed under FSDP: the same run.
    assert losses(tmp_path / "split") == pytest.approx(b, abs=1e-6)
    assert [r["valid_loss"] for r in read_metrics(tmp_path / "split") if "valid_loss" in r] == pytest.approx(vb, abs=1e-6)
    drop = losses(tmp_path / "drop")
    assert drop != pytest.approx(b, abs=1e-3) and losses(tmp_path / "drop-split") == pytest.approx(drop, abs=1e-6)
    state = json.loads((tmp_path / "straight" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 12

    # The FSDP checkpoint is the single-process format: full tensors, tied weights kept tied, optimizer by position.
    model = tiny_gpt2()
    opt = make_optimizer(model, gpt2_config())
    load_checkpoint(tmp_path / "straight" / "checkpoints" / "last", model, opt, restore_rng=False)
    assert model.lm_head.weight is model.transformer.wte.weight
    for (name, p), q in zip(model.named_parameters(), single.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name
        assert torch.allclose(opt.state[p]["exp_avg"], single.optimizer.state[q]["exp_avg"], atol=1e-5), name
    assert evaluate(model)["valid_loss"] == pytest.approx(vb[-1], rel=1e-5)

    # A single process resumes the interrupted FSDP run and finishes it on the same curve.
    alone = gpt2_trainer(tmp_path / "split-copy", gpt2_config())
    alone.fit(resume=True)
    assert losses(tmp_path / "split-copy") == pytest.approx(b, rel=1e-4, abs=1e-5)


LM_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from test_lm import tiny_cfg
    from fnbody.commands.lm import train_lm
    cfg = tiny_cfg(max_epochs=2, batch_size=4, micro_batch_size=1, parallel="fsdp")
    train_lm(sys.argv[1], sys.argv[2], cfg)
''')


def test_fsdp_lm_command_matches_one_process_and_exports_full_weights(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    script = tmp_path / "fsdp_lm.py"
    script.write_text(LM_SCRIPT.format(tests=TESTS))
    cache = str(tmp_path / "cache")
    run_torchrun([script, tiny_corpus, tmp_path / "fsdp"], tmp_path, FNBODY_CACHE=cache)
    run([sys.executable, script, tiny_corpus, tmp_path / "single"], FNBODY_CACHE=cache)
    a, b = losses(tmp_path / "single"), losses(tmp_path / "fsdp")
    assert len(a) == len(b) >= 10
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    evals = [r for r in read_metrics(tmp_path / "fsdp") if "valid_bleu" in r]  # BLEU generation ran on rank 0 alone
    assert len(evals) == 2
    info = json.loads((tmp_path / "fsdp" / "fnbody.json").read_text())
    state = json.loads((tmp_path / "fsdp" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert info["config"]["train"]["parallel"] == "fsdp" and state["world_size"] == 2

    # The run folder (exported by rank 0 from gathered shards) is a full HF model: plain transformers
    # loads it, with every weight, and it gives the single-process run's logits.
    fsdp = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fsdp"))
    alone = AutoModelForCausalLM.from_pretrained(str(tmp_path / "single"))
    assert fsdp.lm_head.weight.data_ptr() == fsdp.transformer.wte.weight.data_ptr()
    x = torch.arange(20).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(fsdp(x).logits, alone(x).logits, atol=1e-3)
        ckpt = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fsdp"))
        load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "best", ckpt, restore_rng=False)
        assert torch.equal(ckpt(x).logits, fsdp(x).logits)

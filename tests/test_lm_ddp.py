"""`fnbody train lm` under torchrun: 2 gloo processes follow the 1-process loss curve at the same global batch."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import torchrun

SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from test_lm import tiny_cfg
    from fnbody.commands.lm import train_lm
    cfg = tiny_cfg(max_epochs=2, batch_size=4)
    cfg.data.bleu_samples = 0
    train_lm(sys.argv[1], sys.argv[2], cfg)
''')


def losses(run):
    return [r["train_loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def test_ddp_gloo_two_processes_match_one(tiny_corpus, tmp_path):
    script = tmp_path / "ddp_lm.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**__import__("os").environ, "FNBODY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    p = torchrun([script, tiny_corpus, tmp_path / "ddp"], tmp_path, FNBODY_CACHE=env["FNBODY_CACHE"])
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, str(script), str(tiny_corpus), str(tmp_path / "single")], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(a) == len(b) >= 10
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    # Same tokenizer on both ranks (rank 1 read rank 0's), and the run folder is a full HF model.
    assert (tmp_path / "ddp" / "model.safetensors").exists()
    assert (tmp_path / "ddp" / "tokenizer.json").read_text() == (tmp_path / "single" / "tokenizer.json").read_text()

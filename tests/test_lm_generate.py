"""The fast transformer generator: stopping, streaming, batching with left padding, context cuts."""

import pytest
import torch

from fnbody.errors import FnbodyError
from fnbody.generate.base import GenerationConfig
from fnbody.generate.lm import LMGenerator, _sample, body_indent
from lm_helpers import TINY_TEXTS, ScriptedLM, drain

PROMPT = 'def add(a, b):\n    """Add."""\n'


@pytest.fixture(scope="module")
def tokenizer():
    from fnbody.tokens.byte_bpe import train_byte_bpe

    return train_byte_bpe(TINY_TEXTS + ["x = 1\nprint(x)\n# done\n"], vocab_size=300, min_frequency=1)


def scripted(tokenizer, text: str, eos: bool = False):
    """A generator whose model writes `text` (then EOS, or spaces forever) after PROMPT."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tail = [tokenizer.eos_token_id] if eos else tokenizer(" ", add_special_tokens=False)["input_ids"]
    prompt_len = 1 + len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    model = ScriptedLM(ids + tail, len(tokenizer), prompt_len)
    return LMGenerator(model, tokenizer, name="scripted")


def test_stops_at_dedented_line_and_reports_tokens(tokenizer):
    gen = scripted(tokenizer, "    return a + b\nprint(x)\n")
    [[c]] = gen.generate([PROMPT], GenerationConfig(max_new_tokens=50))
    assert c.text == "    return a + b\n"
    assert c.finish_reason == "stop"
    assert 0 < c.num_tokens < 50
    assert c.mean_logprob is not None and c.mean_logprob > -0.01  # the script's tokens are near-certain


def test_stops_at_eos_and_at_length(tokenizer):
    [[c]] = scripted(tokenizer, "    return a\n", eos=True).generate([PROMPT], GenerationConfig(max_new_tokens=50))
    assert (c.text, c.finish_reason) == ("    return a\n", "stop")
    [[c]] = scripted(tokenizer, "    return a + b\n    x = 1\n").generate([PROMPT], GenerationConfig(max_new_tokens=3))
    assert c.finish_reason == "length" and c.num_tokens == 3


def test_extra_stop_strings(tokenizer):
    gen = scripted(tokenizer, "    x = 1\n    # done\n    return x\n")
    [[c]] = gen.generate([PROMPT], GenerationConfig(max_new_tokens=60, stop=("# done",)))
    assert c.text == "    x = 1\n    "


def test_stream_joins_to_generate(tokenizer):
    gen = scripted(tokenizer, "    x = 1\n\n    return x\nprint(x)\n")
    cfg = GenerationConfig(max_new_tokens=60, stop=("return",))
    pieces = list(gen.stream(PROMPT, cfg))
    [[c]] = gen.generate([PROMPT], cfg)
    assert "".join(pieces) == c.text == "    x = 1\n\n    "
    assert len(pieces) > 1  # it streams, not one final chunk


@pytest.mark.parametrize("max_new,finish", [(4, "length"), (60, "stop")])
def test_stream_returns_the_completion_with_generates_finish_reason(tokenizer, max_new, finish):
    # The server reads the finish reason from here: counting pieces cannot tell, since merged characters and empty
    # pieces make fewer pieces than tokens.
    gen = scripted(tokenizer, "    naïve = 'héllo wörld'\n    return naïve\nprint(x)\n")
    cfg = GenerationConfig(max_new_tokens=max_new)
    text, done = drain(gen.stream(PROMPT, cfg))
    [[c]] = gen.generate([PROMPT], cfg)
    assert (done.text, done.finish_reason, done.num_tokens) == (c.text, c.finish_reason, c.num_tokens)
    assert c.finish_reason == finish and text == c.text
    assert gen.count_tokens(c.text) > 0 and gen.count_tokens("") == 0


def test_batched_rows_finish_independently(tokenizer):
    gen = scripted(tokenizer, "    return a + b\nprint(x)\n")
    prompts = [PROMPT, PROMPT, "class A:\n" + "    def add(a, b):\n        \"\"\"Add.\"\"\"\n"]
    out = gen.generate(prompts, GenerationConfig(max_new_tokens=40, n=2, batch_size=4))
    assert [len(o) for o in out] == [2, 2, 2]
    assert out[0][0].text == out[1][1].text == "    return a + b\n"


def test_prompt_without_def_is_an_error(tokenizer):
    gen = scripted(tokenizer, "    pass\n")
    with pytest.raises(FnbodyError, match="prompt 1.*no `def`"):
        gen.generate([PROMPT, "x = 1\n"], GenerationConfig())
    with pytest.raises(FnbodyError, match="no `def`"):
        list(gen.stream("just text", GenerationConfig()))


def test_long_prompt_is_cut_from_the_left_with_a_warning(tokenizer, capsys):
    gen = scripted(tokenizer, "    return a\n", eos=True)
    gen.max_context = 40
    long_prompt = "# " + "x = 1 " * 80 + "\n" + PROMPT
    ids = gen._encode_prompts([long_prompt], GenerationConfig(max_new_tokens=10))[0]
    assert len(ids) == 30
    assert ids == [gen.eos, *tokenizer(long_prompt, add_special_tokens=False)["input_ids"]][-30:]
    assert "keeping the last 30" in capsys.readouterr().err


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    # top_k=1 and a tiny top_p both leave only the argmax.
    assert all(_sample(logits, GenerationConfig(temperature=1.0, top_k=1), g).item() == 3 for _ in range(20))
    assert all(_sample(logits, GenerationConfig(temperature=1.0, top_p=0.01), g).item() == 3 for _ in range(20))
    seen = {_sample(logits, GenerationConfig(temperature=5.0, top_k=2), g).item() for _ in range(200)}
    assert seen == {2, 3}
    assert _sample(logits, GenerationConfig(), None).item() == 3
    # A temperature that overflows the logits (1e-40 is below float32's normal range) or a top_p below float32's
    # smallest step still picks the argmax instead of sampling from NaNs.
    assert _sample(logits, GenerationConfig(temperature=1e-40), g).item() == 3
    assert _sample(logits, GenerationConfig(temperature=1.0, top_p=1e-46), g).item() == 3
    masked = torch.tensor([[float("-inf"), 1.0, 2.0, float("-inf")]])
    assert _sample(masked, GenerationConfig(temperature=1e-30), g).item() == 2


def test_seed_must_fit_torch_generators():
    GenerationConfig(seed=2**63 - 1)
    for bad in (2**63, 2**64, -1):
        with pytest.raises(ValueError, match="seed must be in"):
            GenerationConfig(seed=bad)


def test_batched_left_padding_matches_one_at_a_time():
    """A real (random) GPT-2: batched greedy decoding with left padding equals unbatched decoding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from fnbody.tokens.byte_bpe import train_byte_bpe

    tok = train_byte_bpe(TINY_TEXTS, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=32, n_positions=128)).eval()
    gen = LMGenerator(model, tok)
    prompts = [PROMPT, "def f(x):\n    \"\"\"Double a number and return it please.\"\"\"\n", "def g():\n"]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=3)
    batched = gen.generate(prompts, cfg)
    single = [gen.generate([p], GenerationConfig(max_new_tokens=12, batch_size=1))[0][0] for p in prompts]
    for [b], s in zip(batched, single):
        assert b.text == s.text and b.num_tokens == s.num_tokens
        assert b.mean_logprob == pytest.approx(s.mean_logprob, abs=1e-4)


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)  # a seed whose random model does not pick end-of-text in its first 10 tokens
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def test_greedy_matches_plain_transformers_generate():
    """The KV-cache loop must produce exactly plain `model.generate`'s greedy tokens (a rotary-position model)."""
    from fnbody.tokens.byte_bpe import train_byte_bpe

    tok = train_byte_bpe(TINY_TEXTS, vocab_size=300, min_frequency=1)
    model = _tiny_llama(len(tok))
    gen = LMGenerator(model, tok)
    [[ours]] = gen.generate([PROMPT], GenerationConfig(max_new_tokens=10, batch_size=1), ignore_end=True)
    ids = torch.tensor([[tok.eos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]])
    with torch.inference_mode():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10, do_sample=False,
                               pad_token_id=tok.eos_token_id, eos_token_id=None)
    plain_text = tok.decode(plain[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
    # Equal up to a trailing partial UTF-8 character, which the incremental decoder holds back.
    assert ours.num_tokens == 10 and len(ours.text) >= 8 and plain_text.startswith(ours.text)


def test_older_cache_argument_name_and_a_model_that_drops_the_cache():
    """transformers before 5.2x names the cache `past_key_values`; a model that ignores the cache is refused, not decoded blind."""
    from fnbody.tokens.byte_bpe import train_byte_bpe

    tok = train_byte_bpe(TINY_TEXTS, vocab_size=300, min_frequency=1)
    inner = _tiny_llama(len(tok))
    inner_kwarg = LMGenerator(inner, tok)._cache_kwarg  # whatever the installed transformers calls it

    class OldNaming(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                              logits_to_keep=logits_to_keep, **{inner_kwarg: past_key_values})

    class DropsCache(OldNaming):
        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=logits_to_keep)

    cfg = GenerationConfig(max_new_tokens=6, batch_size=1)
    expected = LMGenerator(inner, tok).generate([PROMPT], cfg, ignore_end=True)[0][0].text
    assert LMGenerator(OldNaming(), tok).generate([PROMPT], cfg, ignore_end=True)[0][0].text == expected
    DropsCache.forward.__signature__ = None  # plain signature: takes neither name
    with pytest.raises(FnbodyError, match="neither `cache` nor `past_key_values`"):
        LMGenerator(DropsCache(), tok).generate([PROMPT], cfg)


def test_require_body_forbids_ending_before_the_body(tokenizer):
    """A model that ends the function at once (as SmolLM2-Instruct does) must first indent a body line."""
    gen = scripted(tokenizer, "", eos=True)  # always prefers end-of-text
    [[plain]] = gen.generate([PROMPT], GenerationConfig(max_new_tokens=8))
    assert plain.text == "" and plain.num_tokens == 1 and plain.finish_reason == "stop"
    [[forced]] = gen.generate([PROMPT], GenerationConfig(max_new_tokens=8, require_body=True))
    # the body's indentation (the docstring's), then code, and only then may it end
    assert forced.num_tokens >= 2 and forced.text.startswith("    ") and not forced.text[4].isspace()
    # A comment is not a body: the row must go on to a line of code before it may end.
    commenting = scripted(tokenizer, "    # hi\n", eos=True)
    [[c]] = commenting.generate([PROMPT], GenerationConfig(max_new_tokens=24, require_body=True))
    assert c.text.startswith("    # hi\n    ") and c.text.split("\n")[1].strip()
    # Mid-line prompts have begun their body already: nothing is masked.
    [[mid]] = gen.generate([PROMPT + "    return"], GenerationConfig(max_new_tokens=8, require_body=True))
    assert mid.num_tokens == 1


def test_require_body_mask_never_bans_every_token(tokenizer):
    """Whitespace deeper than the body's indentation (reachable after a comment line) cannot be repaired: only ending is banned."""
    gen = scripted(tokenizer, "", eos=True)
    deep = gen._indent_mask("    ", " " * 7)
    assert not bool(deep.all()) and bool(deep[gen.eos_ids].all())
    assert int((~gen._indent_mask("    ", "")).sum()) > 0


def test_body_indent_follows_the_docstring_else_four_spaces():
    assert body_indent(PROMPT) == "    "
    assert body_indent('class A:\n  def f(self):\n     """Odd indent."""\n') == "     "
    assert body_indent("def f(x):\n") == "    "
    assert body_indent("    def g():\n") == " " * 8

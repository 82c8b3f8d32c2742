"""The BLEU family for generated function bodies, each number with a signature string.

* `seed-bleu`: the report's number. Its script averaged NLTK's
  `sentence_bleu([reference], hypothesis)` with plain strings, i.e. 4-gram BLEU over
  *characters*, no smoothing, reference = the whole original function (`code`), hypothesis =
  the generated continuation. Reimplemented here exactly (NLTK is a test-only dependency).
* `bleu`: corpus BLEU-4 over Python `tokenize` tokens of the body (sacrebleu, tokenize="none").
* `codexglue-bleu`: CodeXGLUE code-to-text's smoothed sentence BLEU-4 (smooth_bleu.py: +1 on
  orders 2-4, mteval normalisation, averaged, x100).
* `exact-match` over code tokens, and `chrF` (sacrebleu) over the raw body text.
"""

from __future__ import annotations

import io
import math
import re
import sys
import tokenize
import xml.sax.saxutils
from collections import Counter
from typing import Sequence

from fnbody import __version__
from fnbody.errors import FnbodyError

_SKIP_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER, tokenize.COMMENT,
                tokenize.ENCODING}
_FALLBACK_RE = re.compile(r"\w+|[^\s\w]")


def code_tokens(text: str) -> list[str]:
    """Python tokenize tokens (no comments or layout); text that tokenize rejects is split on words and symbols."""
    toks: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type not in _SKIP_TOKENS and tok.string.strip():
                toks.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        # Generated code is often cut mid-string or mid-bracket; fall back rather than drop it.
        return _FALLBACK_RE.findall(text)
    return toks


# --- seed-bleu: NLTK sentence_bleu on strings, reproduced ------------------------------------

def _char_ngrams(s: str, n: int) -> Counter:
    return Counter(s[i:i + n] for i in range(len(s) - n + 1)) if len(s) >= n else Counter()


def nltk_sentence_bleu(reference: str, hypothesis: str, max_n: int = 4) -> float:
    """nltk.translate.bleu_score.sentence_bleu([reference], hypothesis) for strings: char n-grams, method0."""
    nums, dens = [], []
    for n in range(1, max_n + 1):
        hyp, ref = _char_ngrams(hypothesis, n), _char_ngrams(reference, n)
        nums.append(sum(min(c, ref[g]) for g, c in hyp.items()))
        dens.append(max(1, sum(hyp.values())))
    if nums[0] == 0:
        return 0.0
    c, r = len(hypothesis), len(reference)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    # NLTK's method0 replaces a zero precision by the smallest float instead of returning 0.
    logs = [(1 / max_n) * math.log(num / den if num else sys.float_info.min) for num, den in zip(nums, dens)]
    return bp * math.exp(math.fsum(logs))


# --- codexglue-bleu: CodeXGLUE code-to-text smooth_bleu.py ----------------------------------

_NORM1 = [(re.compile(p), r) for p, r in [("<skipped>", ""), (r"-\n", ""), (r"\n", " ")]]
_NORM2 = [(re.compile(p), r) for p, r in [
    (r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "),
    (r"([^0-9])([\.,])", r"\1 \2 "),
    (r"([\.,])([^0-9])", r" \1 \2"),
    (r"([0-9])(-)", r"\1 \2 "),
]]


def _mteval_normalize(s: str) -> list[str]:
    for pattern, repl in _NORM1:
        s = pattern.sub(repl, s)
    s = xml.sax.saxutils.unescape(s, {"&quot;": '"'})
    s = f" {s} ".lower()
    for pattern, repl in _NORM2:
        s = pattern.sub(repl, s)
    return s.split()


def _split_puncts(line: str) -> str:
    return " ".join(re.findall(r"[\w]+|[^\s\w]", line))


def _ngram_counts(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def codexglue_sentence_bleu(reference: str, hypothesis: str, n: int = 4) -> float:
    """CodeXGLUE smooth_bleu.bleu([ref], hyp)[0] after its splitPuncts(x.strip().lower()) preprocessing, in [0, 1]."""
    ref = _mteval_normalize(_split_puncts(reference.strip().lower()))
    test = _mteval_normalize(_split_puncts(hypothesis.strip().lower()))
    ref_counts, test_counts = _ngram_counts(ref, n), _ngram_counts(test, n)
    correct = [0] * n
    for g, c in test_counts.items():
        correct[len(g) - 1] += min(ref_counts.get(g, 0), c)
    guess = [max(len(test) - k + 1, 0) for k in range(1, n + 1)]
    tiny = sys.float_info.min
    logbleu = 0.0
    for k in range(n):
        add = 1 if k > 0 else 0
        logbleu += math.log(correct[k] + add + tiny) - math.log(guess[k] + add + tiny)
    logbleu /= n
    brevity = min(0.0, 1 - (len(ref) + 1) / (len(test) + 1))
    return math.exp(logbleu + brevity)


def sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    """Sentence BLEU-4 (x100) of one body against several reference bodies, over Python tokens, exp smoothing (sacrebleu).

    The `bleu` metric's tokenisation, for one hypothesis: 0.0 when the hypothesis or every reference is empty.
    """
    import sacrebleu

    hyp = " ".join(code_tokens(hypothesis))
    refs = [" ".join(t) for t in (code_tokens(r) for r in references) if t]
    if not hyp or not refs:
        return 0.0
    return sacrebleu.sentence_bleu(hyp, refs, tokenize="none", smooth_method="exp").score


# --- the report --------------------------------------------------------------------------------

def _sig(metric: str, tok: str, smooth: str, n: int, extra: str = "") -> str:
    return f"{metric}|nrefs:1|tok:{tok}|smooth:{smooth}|n:{n}{extra}|version:fnbody-{__version__}"


def bleu_report(hypotheses: Sequence[str], references: Sequence[str], codes: Sequence[str]) -> dict:
    """Every BLEU-family metric for generated bodies vs reference bodies (codes: whole original functions).

    Returns {"metrics": {name: {"score", "signature"}}, "per_sample": [...]}; scores are in
    the units their sources print (seed-bleu in [0, 1] like the report; the others x100).
    """
    import sacrebleu

    n = len(hypotheses)
    if n == 0 or len(references) != n or len(codes) != n:
        raise FnbodyError(f"bleu_report needs equal, non-empty lists (got {n} hypotheses, {len(references)} references, {len(codes)} codes)")
    hyp_toks = [code_tokens(h) for h in hypotheses]
    ref_toks = [code_tokens(r) for r in references]
    seed = [nltk_sentence_bleu(c, h) for c, h in zip(codes, hypotheses)]
    cxg = [codexglue_sentence_bleu(r, h) for r, h in zip(references, hypotheses)]
    exact = [ht == rt for ht, rt in zip(hyp_toks, ref_toks)]
    bleu = sacrebleu.metrics.BLEU(tokenize="none")
    bleu_score = bleu.corpus_score([" ".join(t) for t in hyp_toks], [[" ".join(t) for t in ref_toks]])
    chrf = sacrebleu.metrics.CHRF()
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    metrics = {
        "seed-bleu": {"score": sum(seed) / n, "signature": _sig("seed-bleu", "char", "none", n, "|ref:code|hyp:completion|nltk-sentence_bleu")},
        # Corpus BLEU of truncated generations is often ruled by its brevity penalty: keep the parts beside the score.
        "bleu": {"score": bleu_score.score, "signature": _sig("bleu", "python-tokenize", "exp", n, f"|corpus|sacrebleu[{bleu.get_signature()}]"),
                 "bp": bleu_score.bp, "sys_len": bleu_score.sys_len, "ref_len": bleu_score.ref_len,
                 "precisions": list(bleu_score.precisions)},
        "codexglue-bleu": {"score": 100.0 * sum(cxg) / n, "signature": _sig("codexglue-bleu", "splitPuncts+mteval", "add1", n, "|sentence-avg|x100")},
        "exact-match": {"score": 100.0 * sum(exact) / n, "signature": _sig("exact-match", "python-tokenize", "none", n, "|x100")},
        "chrf": {"score": chrf_score.score, "signature": _sig("chrf", "char", "none", n, f"|corpus|sacrebleu[{chrf.get_signature()}]")},
    }
    per_sample = [{"seed_bleu": s, "codexglue_bleu": 100.0 * c, "exact_match": e} for s, c, e in zip(seed, cxg, exact)]
    return {"metrics": metrics, "per_sample": per_sample}


def paired_bleu_test(baseline: Sequence[str], system: Sequence[str], references: Sequence[str], n_samples: int = 1000) -> dict:
    """Is `system`'s corpus BLEU (the `bleu` metric above) really different from `baseline`'s on the same references?

    sacrebleu's paired bootstrap resampling (Koehn 2004): `n_samples` resamples of the test rows, both systems
    scored on each. Returns both scores, their difference, the p-value of the difference and each side's 95%
    confidence interval (mean +- ci), with sacrebleu's signature (which records its fixed resampling seed).
    """
    import sacrebleu
    from sacrebleu.significance import PairedTest

    n = len(references)
    if n == 0 or len(baseline) != n or len(system) != n:
        raise FnbodyError(f"paired_bleu_test needs equal, non-empty lists (got {len(baseline)}, {len(system)} and {n})")
    if n_samples < 1:
        raise FnbodyError(f"n_samples must be >= 1, got {n_samples}")
    joined = [[" ".join(code_tokens(t)) for t in texts] for texts in (baseline, system, references)]
    metric = sacrebleu.metrics.BLEU(tokenize="none")
    sig, res = PairedTest([("baseline", joined[0]), ("system", joined[1])], {"BLEU": metric}, [joined[2]],
                          test_type="bs", n_samples=n_samples)()
    base, other = res["BLEU"]  # sacrebleu keys results by the metric's own name
    return {"baseline": base.score, "system": other.score, "delta": other.score - base.score, "p_value": other.p_value,
            "baseline_ci95": [base.mean - base.ci, base.mean + base.ci], "system_ci95": [other.mean - other.ci, other.mean + other.ci],
            "signature": _sig("bleu-paired-bootstrap", "python-tokenize", "exp", n, f"|corpus|sacrebleu[{sig['BLEU']}]")}


"""Evaluation: the BLEU family, sandboxed execution with pass@k, syntax validity, novelty, perplexity.

Modules: `bleu` (seed-bleu, bleu, codexglue-bleu, exact match, chrF, `bleu_report`), `execution`
(the sandbox), `passk` (the unbiased estimator), `humaneval` (functional correctness),
`samples` (loading and validating sample, reference and problem files), `syntax`, `novelty`,
`perplexity`. Nothing here imports torch.
"""

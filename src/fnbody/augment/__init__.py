"""Generation helped by the other halves of fnbody: retrieval (search index) and execution (sandbox).

`rag.RetrievalAugmentedGenerator` puts similar training functions before the prompt;
`checked.ExecutionCheckedGenerator` samples several bodies and ranks them by the docstring's own
doctests. Both wrap any `fnbody.generate.base.Generator` and are generators themselves, so they
compose (checked over RAG) and plug into `fnbody generate`, `fnbody complete`, `fnbody serve` and
the pipeline. Layer: above `evaluate` (uses its sandbox), below `serve`, `pipeline` and `commands`.
"""

"""Retrieval-augmented and execution-checked generation: context placement, budget, leakage, ranking, sandbox, CLI."""

import json
from pathlib import Path

import pytest

from fnbody.augment.checked import Candidate, ExecutionCheckedGenerator, call_examples, doctest_examples, doctest_program, rank_candidates
from fnbody.augment.prompt import function_name, prompt_docstring, query_text
from fnbody.augment.rag import RetrievalAugmentedGenerator, TokenBudget, build_context, training_contexts
from fnbody.augment.rerank import NeighbourRanker, hit_body
from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.generate.base import Completion, GenerationConfig
from lm_helpers import drain

ADD = 'def add(a, b):\n    """Add two numbers.\n\n    >>> add(2, 3)\n    5\n    """\n'


class FixedGenerator:
    """A Generator stand-in that returns fixed candidates and records the prompts it was given."""

    name = "fixed"

    def __init__(self, candidates: list[Completion]):
        self.candidates = candidates
        self.seen: list[str] = []

    def generate(self, prompts, cfg):
        self.seen += list(prompts)
        return [list(self.candidates[:cfg.n]) for _ in prompts]

    def stream(self, prompt, cfg):
        self.seen.append(prompt)
        yield self.candidates[0].text
        return self.candidates[0]


class FakeIndex:
    """Hand-made hits, best first, for every query."""

    def __init__(self, hits, bm25=None):
        self.hits = hits
        self.bm25 = bm25
        self.queries: list[str] = []
        self.weights: list[float] = []

    def __len__(self):
        return len(self.hits)

    def query_many(self, texts, k, *, hybrid=0.0):
        self.queries += list(texts)
        self.weights.append(hybrid)
        return [self.hits[:k] for _ in texts]


def _hit(name, repo, body="    return 1\n"):
    return {"repo": repo, "path": f"{name}.py", "func_name": name, "score": 1.0, "code": f"def {name}():\n{body}"}


# ----- prompts ------------------------------------------------------------------------------------

def test_prompt_docstring_query_and_doctests():
    prompt = "import os\n\ndef helper():\n    '''Not this one.'''\n    return 1\n\n" + ADD
    assert function_name(prompt) == "add"
    assert prompt_docstring(prompt).startswith("Add two numbers.")
    assert query_text(prompt) == "Add two numbers."
    assert doctest_examples(prompt) == [("add(2, 3)\n", "5\n")]
    assert query_text("def read_csv_file(p):\n") == "read csv file"
    # A docstring of stop words and punctuation falls back to the name; with nothing searchable at all, no query.
    assert query_text('def negate(a):\n    """a <-- -a"""\n') == "negate"
    assert query_text('def a(b):\n    """a <-- -a"""\n') == ""
    assert doctest_examples("def f(x):\n    '''No examples.'''\n") == []


# ----- retrieval ----------------------------------------------------------------------------------

def test_context_goes_before_prompt_best_last_within_budget():
    prompt = 'def g():\n    """Do g."""\n'
    hits = [_hit("best", "r1"), _hit("huge", "r2", "    x = 1\n" * 200), _hit("second", "r3"), _hit("third", "r4")]
    context, used = build_context(hits, prompt, k=2, fits=lambda text: len(text) <= 400)
    assert [h["func_name"] for h in used] == ["best", "second"]  # the huge one is skipped whole
    assert context.index("def second") < context.index("def best")  # best nearest the prompt
    assert len(context + prompt) <= 400 and "# Related function from r1/best.py:" in context
    # The prompt's own function (or a copy of it) is never context.
    own = {"repo": "x", "path": "g.py", "code": prompt + "    return 2\n"}
    assert build_context([own], prompt, k=2, fits=lambda t: True)[1] == []


def test_rag_generator_returns_only_body_and_excludes_own_repo():
    base = FixedGenerator([Completion("    return 7\n", mean_logprob=-0.1)])
    index = FakeIndex([_hit("same_repo", "mine"), _hit("other", "theirs"), _hit("third", "else")])
    prompt = 'def g():\n    """Do g."""\n'
    rag = RetrievalAugmentedGenerator(base, index, k=2, exclude_repo={prompt: "mine"}.get, budget_chars=5000)
    out = rag.generate([prompt], GenerationConfig())
    assert out[0][0].text == "    return 7\n"
    sent = base.seen[-1]
    assert sent.endswith(prompt) and "def other" in sent and "def third" in sent and "same_repo" not in sent
    assert [h["repo"] for h in rag.last_retrievals[0].hits] == ["theirs", "else"] and index.queries[-1] == "Do g."
    text, done = drain(rag.stream(prompt, GenerationConfig()))
    assert text == "    return 7\n" and base.seen[-1] == sent and done is base.candidates[0]
    with pytest.raises(FnbodyError, match="k must be"):
        RetrievalAugmentedGenerator(base, index, k=0)


def test_training_contexts_exclude_self_and_repo():
    rec = {"repo": "mine", "prompt": 'def g():\n    """Do g."""\n', "body": "    return 1\n"}
    rec["code"] = rec["prompt"] + rec["body"]
    copy = {"repo": "fork", "path": "g.py", "code": rec["code"]}
    index = FakeIndex([copy, _hit("sibling", "mine"), _hit("other", "theirs")])
    (ctx,) = training_contexts([rec], index, k=2, fits=lambda t: True)
    assert "def other" in ctx and "sibling" not in ctx and "fork" not in ctx
    # A function with nothing to search for trains without context instead of stopping the run.
    bare = {"repo": "x", "prompt": 'def a(b):\n    """a <-- -a"""\n', "body": "    return -a\n"}
    assert training_contexts([bare, rec], index, k=2, fits=lambda t: True)[0] == ""


def test_hybrid_retrieval_needs_bm25_and_reaches_the_index():
    base = FixedGenerator([Completion("    return 7\n", mean_logprob=-0.1)])
    prompt = 'def g():\n    """Do g."""\n'
    with pytest.raises(FnbodyError, match="--bm25"):
        RetrievalAugmentedGenerator(base, FakeIndex([_hit("other", "theirs")]), k=1, hybrid=0.5)
    index = FakeIndex([_hit("other", "theirs")], bm25=object())
    with pytest.raises(FnbodyError, match="hybrid weight"):
        RetrievalAugmentedGenerator(base, index, k=1, hybrid=-1.0)
    RetrievalAugmentedGenerator(base, index, k=1, hybrid=0.5, budget_chars=5000).generate([prompt], GenerationConfig())
    (ctx,) = training_contexts([{"repo": "mine", "prompt": prompt, "body": "    return 1\n"}], index, k=1, fits=lambda t: True, hybrid=2.0)
    assert index.weights == [0.5, 2.0] and "def other" in ctx


@pytest.fixture(scope="module")
def real_index(tmp_path_factory):
    """A tiny real NBoW run and an index of the fixture corpus's train split."""
    from conftest import make_tiny_corpus
    from fnbody.corpus.io import read_split
    from fnbody.search.index import SearchIndex, build_index

    root = tmp_path_factory.mktemp("augment")
    corpus = make_tiny_corpus(root / "corpus")
    run = root / "search"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "nbow", "--out", str(run), "--max-steps", "3",
                 "--set", "model.emb_dim=16", "--set", "model.vocab_size=200", "--set", "train.batch_size=16",
                 "--set", "train.show_progress=false"]) == 0
    build_index(run, read_split(corpus, "train"), root / "index")
    return corpus, run, root / "index", SearchIndex.load(root / "index")


def test_rag_end_to_end_tiny_lm_token_budget(real_index):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from fnbody.corpus.io import read_split
    from fnbody.generate.lm import LMGenerator
    from fnbody.augment.rag import repo_lookup
    from fnbody.tokens.byte_bpe import train_byte_bpe

    corpus, _, _, index = real_index
    rows = read_split(corpus, "test", 4)
    tok = train_byte_bpe([r["code"] for r in read_split(corpus, "train")], vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2)).eval()
    base = LMGenerator(model, tok, name="tiny")
    rag = RetrievalAugmentedGenerator(base, index, k=2, exclude_repo=repo_lookup(rows))
    cfg = GenerationConfig(max_new_tokens=16, batch_size=4)
    outs = rag.generate([r["prompt"] for r in rows], cfg)
    assert len(outs) == 4 and all(len(o) == 1 for o in outs)
    room = 256 - 16 - 1
    for r, rt in zip(rows, rag.last_retrievals):
        assert rt.hits, "the tiny index should supply some context"
        assert all(h["repo"] != r["repo"] for h in rt.hits)  # no leakage from the prompt's repo
        assert len(tok(rt.context + r["prompt"], add_special_tokens=False)["input_ids"]) <= room
    for o in outs:  # only bodies come back, never the context
        assert "# Related function" not in o[0].text and o[0].num_tokens <= 16


def test_token_budget_counts_each_piece_once_and_agrees_with_whole_text_counting():
    from fnbody.tokens.byte_bpe import train_byte_bpe

    hits = [_hit(f"f{i}", f"r{i}", f"    x = {i}\n" * (i + 1)) for i in range(12)]
    prompt = 'def g(a, b):\n    """Add a to b and return the sum."""\n'
    tok = train_byte_bpe([h["code"] for h in hits] + [prompt], vocab_size=300, min_frequency=1)
    calls = []

    def count(text):
        calls.append(text)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    for limit in (30, 60, 90, 200):
        exact = build_context(hits, prompt, 4, lambda text: count(text) <= limit)
        calls.clear()
        budget = TokenBudget(count, limit)
        fast = build_context(hits, prompt, 4, budget)
        assert len(calls) <= len(hits) + 1  # each context function and the prompt counted at most once
        # Never over the limit by more than the slack; at most one function fewer than the exact check keeps.
        assert count(fast[0] + prompt) <= limit + budget.slack * len(fast[1])
        assert len(exact[1]) - 1 <= len(fast[1]) <= len(exact[1])
    assert build_context(hits, prompt, 2, TokenBudget(count, 200))[1] == build_context(hits, prompt, 2, lambda t: count(t) <= 200)[1]

    # Batched counting for training contexts: the same contexts, with the pieces counted in one call per batch.
    recs = [{"repo": "mine", "prompt": f'def g{i}(a, b):\n    """Add a to b, way {i}."""\n', "body": "    return a + b\n"} for i in range(5)]
    index = FakeIndex(hits)
    batches = []

    def count_many(texts):
        batches.append(len(texts))
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    for limit in (120, 400):
        plain = training_contexts(recs, index, k=2, fits=TokenBudget(count, limit))
        calls.clear()
        batches.clear()
        batched = TokenBudget(count, limit, count_many=count_many)
        assert training_contexts(recs, index, k=2, fits=batched, batch=3) == plain and any(plain)
        assert len(batches) == 2, batches  # one counting call per batch of records (5 records, batches of 3)
        assert len(calls) <= 1, calls  # beyond the prefetched pieces, at most a stray one counted alone
    TokenBudget(count, 10).prefetch(["x"])  # without count_many: nothing, no error


# ----- execution checking -------------------------------------------------------------------------

def test_doctest_passing_candidate_outranks_higher_logprob_and_unparsable_is_dropped():
    cands = [
        Completion("    return a - b\n", mean_logprob=-0.1),  # most likely, fails the doctest
        Completion("    return (a +\n", mean_logprob=-0.05),  # does not parse
        Completion("    return a + b\n", mean_logprob=-0.9),  # passes
        Completion("    return a + b\n", mean_logprob=-0.9),  # duplicate, merged
    ]
    gen = ExecutionCheckedGenerator(FixedGenerator(cands), n_candidates=4, include_greedy=False)
    out = gen.generate([ADD], GenerationConfig(n=3))
    assert [c.text for c in out[0]] == ["    return a + b\n", "    return a - b\n"]  # unparsable dropped
    ranked = gen.last_candidates[0]
    assert [c.rank for c in ranked] == [1, 2, 3] and len(ranked) == 3
    assert ranked[0].passed is True and ranked[0].status == "passed" and ranked[0].doctests == 1
    assert ranked[1].passed is False and ranked[2].parses is False and "SyntaxError" in ranked[2].syntax_error
    text, done = drain(gen.stream(ADD, GenerationConfig()))
    assert text == "    return a + b\n" and done.text == text and done.finish_reason == "stop"


FLY = '''def will_it_fly(q, w):
    """True when q is balanced and light enough.

    Example:
    will_it_fly([1, 2], 5) ➞ False
    will_it_fly([3, 2, 3], 9) => true
    * will_it_fly([3], 5) should return True.
    will_it_fly(q, 5) == True
    will_it_fly([3], 5) -> 19 - 5 = 8
    helper(3) == 4
    area(3) returns 6.00  # wrong name: skipped
    """
'''


def test_call_examples_read_informal_one_line_forms():
    assert call_examples(FLY) == [("will_it_fly([1, 2], 5)", False), ("will_it_fly([3, 2, 3], 9)", True),
                                  ("will_it_fly([3], 5)", True)]  # non-literal args, prose values and other names skipped
    assert call_examples('def f(x):\n    """f(2) returns [1, 5] # the odd ones\n    f(1.5) == 0.30"""\n') == [("f(2)", [1, 5]), ("f(1.5)", 0.3)]
    assert call_examples(ADD) == [] or doctest_examples(ADD)  # doctest prompts are checked by doctest


def test_call_examples_are_checked_in_the_sandbox():
    good = "    return q == q[::-1] and sum(q) <= w\n"
    prog = doctest_program(FLY, good)
    assert prog is not None and "_fnbody_check_examples" in prog
    cands = [Completion("    return True\n", mean_logprob=-0.1), Completion(good, mean_logprob=-0.8)]
    gen = ExecutionCheckedGenerator(FixedGenerator(cands), n_candidates=2, include_greedy=False)
    out = gen.generate([FLY], GenerationConfig(n=1))
    assert out[0][0].text == good
    ranked = gen.last_candidates[0]
    assert ranked[0].passed is True and ranked[0].doctests == 3 and ranked[1].passed is False
    assert "docstring examples failed" in ranked[1].reason
    float_fn = 'def area(a):\n    """area(3) == 6.00"""\n'
    assert doctest_program(float_fn, "    return 3 * 2.0000000001\n") is not None


def test_without_doctests_ranking_is_by_logprob():
    ranked = rank_candidates([Candidate("a", -2.0, "stop", 1, "sample"), Candidate("b", -0.5, "stop", 1, "sample"),
                              Candidate("c", None, "stop", 1, "sample")])
    assert [c.text for c in ranked] == ["b", "a", "c"]


def _doc_hit(name, repo, body):
    return {"repo": repo, "path": f"{name}.py", "func_name": name, "score": 1.0,
            "code": f'def {name}(a, b):\n    """Doc of {name}."""\n{body}'}


def test_hit_body_cuts_signature_and_docstring_as_the_corpus_does():
    assert hit_body(_doc_hit("f", "r", "    x = a\n    return x\n")) == "    x = a\n    return x"  # the corpus's body: no final newline
    assert hit_body({"code": "def f(:\n"}) == "def f(:\n"  # unparsable: the whole code
    assert hit_body(_hit("g", "r")) == "def g():\n    return 1\n"  # no docstring to cut after


def test_neighbour_ranking_prefers_agreement_over_logprob_but_not_over_passing_examples():
    index = FakeIndex([_doc_hit("own", "mine", "    return a * b\n"), _doc_hit("add2", "other", "    return a + b\n"),
                       _doc_hit("sub", "other", "    total = a - b\n    return total\n")])
    ranker = NeighbourRanker(index, k=2, exclude_repo=lambda p: "mine")
    assert ranker.references(["def f(a, b):\n    \"\"\"Add.\"\"\"\n"]) == [["    return a + b", "    total = a - b\n    return total"]]
    assert ranker.signature == "neighbours:k2|sentence-bleu|hybrid:0"
    plain = 'def plus(a, b):\n    """Sum of a and b."""\n'  # no examples: agreement decides
    cands = [Completion("    return a * b\n", mean_logprob=-0.1), Completion("    return a + b\n", mean_logprob=-0.9)]
    gen = ExecutionCheckedGenerator(FixedGenerator(cands), n_candidates=2, include_greedy=False, ranker=ranker)
    assert gen.name == "fixed+checked2+nbrank2"
    assert gen.generate([plain], GenerationConfig())[0][0].text == "    return a + b\n"  # the own repo's a * b is excluded
    first, second = gen.last_candidates[0]
    assert first.agreement == pytest.approx(100.0) and second.agreement < first.agreement
    without = ExecutionCheckedGenerator(FixedGenerator(cands), n_candidates=2, include_greedy=False)
    assert without.generate([plain], GenerationConfig())[0][0].text == "    return a * b\n"  # log-probability alone
    # A docstring example still comes first: ADD's doctest passes only for a + b, even against agreeing neighbours.
    sub_index = FakeIndex([_doc_hit("sub", "other", "    return a - b\n")])
    checked = ExecutionCheckedGenerator(FixedGenerator([Completion("    return a - b\n", mean_logprob=-0.1), cands[1]]), n_candidates=2,
                                        include_greedy=False, ranker=NeighbourRanker(sub_index, k=1))
    assert checked.generate([ADD], GenerationConfig())[0][0].text == "    return a + b\n"
    with pytest.raises(FnbodyError, match="k must be"):
        NeighbourRanker(index, k=0)


def test_doctests_run_in_the_sandbox_not_here(tmp_path):
    target = tmp_path / "escaped.txt"
    evil = f"    open({str(target)!r}, 'w').write('x')\n    return a + b\n"
    gen = ExecutionCheckedGenerator(FixedGenerator([Completion(evil, mean_logprob=-0.1)]), n_candidates=1, include_greedy=False)
    gen.generate([ADD], GenerationConfig())
    c = gen.last_candidates[0][0]
    assert c.status != "not run" and not target.exists()  # the write happened (if at all) in the sandbox only


# ----- command line -------------------------------------------------------------------------------

def test_cli_generate_and_complete_with_rag_and_checked(real_index, tmp_path, capsys):
    corpus, search_run, _, _ = real_index
    run = tmp_path / "char"
    assert main(["train", "char-rnn", "--corpus", str(corpus), "--out", str(run), "--max-steps", "2", "--hidden", "16",
                 "--layers", "1", "--seq-len", "32", "--batch-size", "4", "--device", "cpu",
                 "--set", "data.train_eval_chars=400", "--set", "train.show_progress=false"]) == 0
    index = tmp_path / "index"
    assert main(["search", "index", str(search_run), "--corpus", str(corpus), "--splits", "train", "--out", str(index)]) == 0
    samples = tmp_path / "samples.jsonl"
    assert main(["generate", str(run), "--input", str(corpus), "--output", str(samples), "--max-samples", "2",
                 "--max-new-tokens", "20", "--device", "cpu", "--rag-index", str(index), "--rag-k", "1", "--checked", "2"]) == 0
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["model"].endswith("+rag1+checked2")
    prompt = tmp_path / "p.py"
    prompt.write_text(ADD)
    capsys.readouterr()
    assert main(["complete", str(run), str(prompt), "--json", "--max-new-tokens", "12", "--device", "cpu",
                 "--rag-index", str(index), "--checked", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["complete", str(run), str(prompt), "--max-new-tokens", "12", "--rag-index", str(tmp_path / "nope")]) == 2
    assert main(["complete", str(run), str(prompt), "--checked", "-1"]) == 2
    assert main(["complete", str(run), str(prompt), "--rag-hybrid", "0.3"]) == 2  # a retrieval weight without an index
    assert main(["complete", str(run), str(prompt), "--rag-index", str(index), "--rag-hybrid", "0.3"]) == 2  # index lacks BM25
    capsys.readouterr()
    assert main(["complete", str(run), str(prompt), "--json", "--max-new-tokens", "12", "--device", "cpu",
                 "--checked", "2", "--rank-by-neighbours", str(index), "--rank-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["complete", str(run), str(prompt), "--rank-by-neighbours", str(index)]) == 2  # ranking needs --checked
    capsys.readouterr()
    assert main(["complete", str(run), str(prompt), "--guide-by-neighbours", str(index)]) == 2  # a char-RNN has no token mixture
    assert "needs a transformers model" in capsys.readouterr().err
    assert main(["generate", str(run), "--input", str(corpus), "--output", str(tmp_path / "nb.jsonl"), "--max-samples", "2",
                 "--max-new-tokens", "8", "--device", "cpu", "--checked", "2", "--rank-by-neighbours", str(index)]) == 0
    assert json.loads((tmp_path / "nb.jsonl").read_text().splitlines()[0])["model"].endswith("+checked2+nbrank3")


def test_rag_hybrid_on_a_real_bm25_index_follows_the_fused_ranking(real_index, tmp_path):
    from fnbody.augment.rag import query_all
    from fnbody.augment.prompt import query_text
    from fnbody.corpus.io import read_split
    from fnbody.search.index import SearchIndex, build_index

    corpus, run, plain_index, _ = real_index
    rows = read_split(corpus, "test", 3)
    base = FixedGenerator([Completion("    return 7\n", mean_logprob=-0.1)])
    with pytest.raises(FnbodyError, match="--bm25"):  # the fixture index has no lexical channel
        RetrievalAugmentedGenerator(base, SearchIndex.load(plain_index), k=1, hybrid=0.3)
    build_index(run, read_split(corpus, "train"), tmp_path / "idx", bm25=True)
    index = SearchIndex.load(tmp_path / "idx")
    queries = [query_text(r["prompt"]) for r in rows]
    for w in (0.0, 5.0):
        got = query_all(index, queries, 4, hybrid=w)
        want = [index.query(q, 4, hybrid=w) for q in queries]
        assert [[h["code"] for h in g] for g in got] == [[h["code"] for h in x] for x in want]
    rag = RetrievalAugmentedGenerator(base, index, k=2, hybrid=5.0, budget_chars=20000)
    (rt,) = rag.retrieve([rows[0]["prompt"]], exclude_repos=[rows[0]["repo"]])
    fused = [h for h in index.query(queries[0], 20, hybrid=5.0) if h["repo"] != rows[0]["repo"]]
    assert [h["func_name"] for h in rt.hits] == [h["func_name"] for h in fused[:2]]


def test_serve_accepts_the_flags():
    import argparse

    from fnbody.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers(), {})
    args = parser.parse_args(["serve", "RUN", "--rag-index", "IDX", "--rag-k", "3", "--checked", "4", "--rag-hybrid", "0.3",
                              "--rank-by-neighbours", "IDX2", "--rank-k", "5", "--guide-by-neighbours", "IDX3", "--guide-k", "2",
                              "--guide-alpha", "0.4"])
    assert (args.rag_index, args.rag_k, args.checked, args.rag_hybrid, args.rank_by_neighbours, args.rank_k) == ("IDX", 3, 4, 0.3, "IDX2", 5)
    assert (args.guide_by_neighbours, args.guide_k, args.guide_alpha) == ("IDX3", 2, 0.4)


# ----- training with retrieved context --------------------------------------------------------------

def test_lm_data_context_is_prompt_side_only():
    from fnbody.tokens.byte_bpe import train_byte_bpe
    from fnbody.train.lm_data import tokenize_functions

    rec = {"prompt": 'def g():\n    """Do g."""\n', "body": "    return 1\n"}
    tok = train_byte_bpe([rec["prompt"] + rec["body"], "# Related function:\ndef h():\n    return 2\n"], vocab_size=280, min_frequency=1)
    ids0, mask0 = tokenize_functions([rec], tok)
    ctx = "# Related function:\ndef h():\n    return 2\n\n\n"
    ids1, mask1 = tokenize_functions([rec], tok, contexts=[ctx])
    assert len(ids1) > len(ids0) and int(mask1.sum()) == int(mask0.sum())  # same body targets, more prompt
    assert tok.decode(ids1[1:1 + len(ids1) - len(ids0)]).startswith("# Related")
    with pytest.raises(FnbodyError, match="contexts for"):
        tokenize_functions([rec], tok, contexts=[])


def test_cli_train_lm_with_retrieved_context(real_index, tmp_path):
    corpus, _, index, _ = real_index
    run = tmp_path / "lm"
    assert main(["train", "lm", "--corpus", str(corpus), "--out", str(run), "--init", "scratch:tiny", "--vocab-size", "300",
                 "--block-size", "64", "--batch-size", "4", "--max-steps", "1", "--device", "cpu",
                 "--set", "data.bleu_samples=0", "--set", "train.show_progress=false", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                 "--set", f"data.rag_index={index}", "--set", "data.rag_k=1"]) == 0
    info = json.loads((run / "fnbody.json").read_text())
    assert info["config"]["data"]["rag_index"] == str(index)
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert metas and all(m["context"].startswith("rag|index:") for m in metas)
    # Retrieval-guided decoding on the tuned tiny transformer: generate, complete (with --checked on top).
    out = tmp_path / "guided.jsonl"
    assert main(["generate", str(run), "--input", str(corpus), "--output", str(out), "--max-samples", "2", "--max-new-tokens", "8",
                 "--device", "cpu", "--guide-by-neighbours", str(index), "--guide-k", "2", "--guide-alpha", "0.5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["model"].endswith("+guide2")
    prompt = tmp_path / "p.py"
    prompt.write_text(ADD)
    assert main(["complete", str(run), str(prompt), "--max-new-tokens", "8", "--device", "cpu", "--guide-by-neighbours", str(index),
                 "--checked", "2"]) == 0
    assert main(["complete", str(run), str(prompt), "--guide-by-neighbours", str(index), "--guide-alpha", "1.5"]) == 2


def test_rag_fraction_picks_a_stable_share_of_training_functions():
    from fnbody.commands.lm import LMDataConfig, with_context

    recs = [{"url": f"https://example.com/f{i}", "prompt": f"def f{i}():\n"} for i in range(2000)]
    picked = [with_context(r, 0.25) for r in recs]
    assert 400 < sum(picked) < 600  # about a quarter
    assert picked == [with_context(r, 0.25) for r in recs]  # a hash, not the RNG: the same every run
    assert all(with_context(r, 1.0) for r in recs[:50])
    with pytest.raises(ValueError, match="rag_fraction"):
        LMDataConfig(rag_fraction=0.0)
    with pytest.raises(ValueError, match="rag_hybrid"):
        LMDataConfig(rag_hybrid=float("nan"))


def test_rag_fraction_contexts_only_for_chosen_functions(real_index):
    from fnbody.commands.lm import LMDataConfig, _rag_contexts, with_context
    from fnbody.corpus.io import read_split
    from fnbody.tokens.byte_bpe import train_byte_bpe

    corpus, _, index, _ = real_index
    records = read_split(corpus, "train")
    tok = train_byte_bpe([r["prompt"] + r["body"] for r in records], vocab_size=300, min_frequency=1)
    contexts, key = _rag_contexts(LMDataConfig(rag_index=str(index), rag_k=1, rag_fraction=0.5, block_size=512), tok)
    got = contexts(records)
    chosen = [with_context(r, 0.5) for r in records]
    assert "fraction:0.5" in key and "hybrid" not in key and 0 < sum(chosen) < len(records)
    with pytest.raises(FnbodyError, match="--bm25"):  # hybrid retrieval for training needs the lexical channel too
        _rag_contexts(LMDataConfig(rag_index=str(index), rag_hybrid=0.3), tok)
    assert all(c == "" for c, keep in zip(got, chosen) if not keep)
    assert any(c for c, keep in zip(got, chosen) if keep)

"""The server around a real (tiny, freshly trained) char-RNN: the HTTP answers are the model's own."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from conftest import make_tiny_corpus
from fnbody.generate.base import GenerationConfig
from fnbody.serve import create_app
from test_serve import sse_payloads

# Ends mid-line, so even an untrained model's first line is kept (a fresh line would be judged and
# usually cut at once): the test then compares real, non-empty model text.
PROMPT = 'def add_3(a, b):\n    """Return the sum of a and b plus 3."""\n    total = '


@pytest.fixture(scope="module")
def char_rnn_run(tmp_path_factory):
    from fnbody.cli import main

    root = tmp_path_factory.mktemp("serve_model")
    corpus = make_tiny_corpus(root / "corpus", n_per_split=(24, 6, 6))
    rc = main(["train", "char-rnn", "--corpus", str(corpus), "--out", str(root / "run"), "--max-steps", "3",
               "--max-epochs", "1", "--hidden", "16", "--layers", "1", "--embedding-dim", "8", "--seq-len", "32",
               "--batch-size", "8", "--device", "cpu"])
    assert rc == 0
    return root / "run"


def test_server_answers_with_the_models_own_completions(char_rnn_run):
    from fnbody.generate.load import load_generator

    gen = load_generator(char_rnn_run, device="cpu")
    direct = gen.generate([PROMPT], GenerationConfig(temperature=1.0, seed=7, max_new_tokens=40))[0][0]
    assert direct.text
    with TestClient(create_app(gen)) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == gen.name
        req = {"model": gen.name, "prompt": PROMPT, "temperature": 1.0, "seed": 7, "max_tokens": 40}
        r = c.post("/v1/completions", json=req)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == direct.text and choice["finish_reason"] == direct.finish_reason
        events = sse_payloads(c.post("/v1/completions", json={**req, "stream": True}).text)
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == direct.text
        assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
        r = c.post("/v1/completions", content=json.dumps({**req, "max_tokens": 0}), headers={"content-type": "application/json"})
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]


def test_serve_command_wires_run_and_search_index(char_rnn_run, tmp_path, monkeypatch, capsys):
    """`fnbody serve RUN --search INDEX` with a real search run and index; uvicorn.run is intercepted."""
    import uvicorn

    from fnbody.cli import main

    corpus = char_rnn_run.parent / "corpus"
    assert main(["train", "search", "--corpus", str(corpus), "--out", str(tmp_path / "srun"), "--max-steps", "2", "--device", "cpu"]) == 0
    assert main(["search", "index", str(tmp_path / "srun"), "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 0
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app, host=host, port=port))
    assert main(["serve", str(char_rnn_run), "--search", str(tmp_path / "index"), "--port", "8123", "--max-tokens-cap", "50"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    with TestClient(served["app"]) as c:
        assert c.get("/health").json()["search"] is True
        hits = c.post("/v1/search", json={"query": "merge two dictionaries", "k": 3}).json()["data"]
        assert len(hits) == 3 and all({"func_name", "score", "code"} <= set(h) for h in hits)
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
        r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 51})
        assert r.status_code == 400 and "cap of 50" in r.json()["error"]["message"]
    # --search-int8: the same index answers through an int8 query encoder
    assert main(["serve", str(char_rnn_run), "--search", str(tmp_path / "index"), "--search-int8"]) == 0
    with TestClient(served["app"]) as c:
        hits8 = c.post("/v1/search", json={"query": "merge two dictionaries", "k": 3}).json()["data"]
    assert len(hits8) == 3 and hits8[0]["score"] == pytest.approx(hits[0]["score"], abs=0.1)
    capsys.readouterr()
    assert main(["serve", str(char_rnn_run), "--dtype", "bf16"]) == 2  # a char-RNN has no bf16 transformers weights
    assert "--dtype bf16 applies to transformers (lm) runs, not to a char-rnn run" in capsys.readouterr().err

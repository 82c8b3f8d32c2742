"""The lean BERT query encoder matches the Hugging Face tower it is built from, and steps aside when it cannot."""

from __future__ import annotations

import pytest
import torch

from fnbody.search.leanbert import LeanBertEncoder, lean_encoder
from fnbody.search.pretrained import PretrainedEncoder, read_pretrained_folder
from test_search_minilm import make_bert_folder

WORDS = ["read", "a", "csv", "file", "merge", "two", "dictionaries"]


def tower(folder) -> PretrainedEncoder:
    """A pretrained tower with the folder's weights, in eval mode."""
    return PretrainedEncoder(read_pretrained_folder(folder), weights_from=folder).eval()


def batch(vocab: int) -> torch.Tensor:
    """(4, 9) ids: one full row and three padded ones (id 0 = padding)."""
    ids = torch.randint(5, vocab, (4, 9), generator=torch.Generator().manual_seed(1))
    ids[1, 6:] = 0
    ids[2, 2:] = 0
    ids[3, 8:] = 0
    return ids


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", True)])
def test_lean_encoder_matches_the_hugging_face_tower(tmp_path, pooling, normalize):
    enc = tower(make_bert_folder(tmp_path / "bert", WORDS, pooling=pooling, normalize=normalize))
    vocab = enc.model.config.vocab_size
    lean = lean_encoder(enc, vocab)
    assert isinstance(lean, LeanBertEncoder) and lean.dim == enc.dim
    ids = batch(vocab)
    with torch.inference_mode():
        full, fast = enc(ids), lean(ids)
        one = lean(ids[:1])
    assert full.shape == fast.shape == (4, enc.dim)
    assert torch.allclose(fast, full, atol=1e-5)
    assert torch.allclose(one, full[:1], atol=1e-5)  # the unmasked single-query path
    # Padding is ignored: a padded row equals the same tokens without their padding.
    with torch.inference_mode():
        assert torch.allclose(lean(ids[2:3, :2]), fast[2:3], atol=1e-5)
    if normalize:
        assert torch.allclose(fast.norm(dim=1), torch.ones(4), atol=1e-5)


def test_lean_encoder_copies_weights_and_leaves_the_tower_as_it_was(tmp_path):
    enc = tower(make_bert_folder(tmp_path / "bert", WORDS)).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    lean = lean_encoder(enc, enc.model.config.vocab_size)
    assert isinstance(lean, LeanBertEncoder) and enc.training  # the check ran in eval mode and restored training mode
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    assert not any(p.data_ptr() == q.data_ptr() for p in lean.parameters() for q in enc.parameters())


def test_unsupported_or_mismatching_towers_are_kept(tmp_path, monkeypatch):
    enc = tower(make_bert_folder(tmp_path / "bert", WORDS))
    enc.model.config.hidden_act = "relu"  # an activation the lean layers do not run
    assert lean_encoder(enc, enc.model.config.vocab_size) is enc
    enc.model.config.hidden_act = "gelu"
    assert lean_encoder(torch.nn.Linear(3, 3), 10).__class__ is torch.nn.Linear  # not a pretrained tower at all
    # A tower whose outputs the lean copy does not reproduce is kept as it is.
    monkeypatch.setattr(LeanBertEncoder, "forward", lambda self, ids: torch.zeros(len(ids), self.dim))
    assert lean_encoder(enc, enc.model.config.vocab_size) is enc

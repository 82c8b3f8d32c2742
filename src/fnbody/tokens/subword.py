"""A BPE subword vocabulary over CodeSearchNet tokens (code tokens or docstring tokens).

CSN's baselines encode each token sequence with a BPE vocabulary of about 10k entries built from
the training split. Here the `tokenizers` library learns the merges; each CSN token is one
pre-tokenized "word", lower-cased, so `read_csv`, `readCsv` and `ReadCSV` share subwords.
Id 0 is padding and id 1 the unknown token, which the encoders rely on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from fnbody.errors import FnbodyError
from fnbody.io import atomic_write_text

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
MAX_TOKEN_CHARS = 64  # long string literals carry little signal and blow up BPE training time
WORD_CACHE_MAX = 1_000_000  # words whose subword ids are remembered between calls
_SPACE = re.compile(r"\s+")


def clean_tokens(tokens: Sequence[str]) -> list[str]:
    """CSN tokens as BPE words: whitespace removed (a word cannot hold spaces), truncated, empties dropped."""
    out = []
    for t in tokens:
        t = _SPACE.sub("", str(t))[:MAX_TOKEN_CHARS]
        if t:
            out.append(t)
    return out


class SubwordVocab:
    """A trained BPE tokenizer mapping CSN token lists to id lists of bounded length."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._word_ids: dict[str, list[int]] = {}  # BPE never merges across words, so each word encodes once
        if tokenizer.token_to_id(PAD) != PAD_ID or tokenizer.token_to_id(UNK) != UNK_ID:
            raise FnbodyError("subword vocabulary must have <pad> at id 0 and <unk> at id 1")

    @property
    def size(self) -> int:
        """Number of ids, padding and unknown included."""
        return self.tokenizer.get_vocab_size()

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """Subword ids of one token list, cut to `max_len` (no padding)."""
        return self.encode_batch([tokens], max_len)[0]

    def encode_batch(self, token_lists: Sequence[Sequence[str]], max_len: int) -> list[list[int]]:
        """Subword ids of many token lists, each cut to `max_len` (no padding)."""
        words = [clean_tokens(t) or [UNK] for t in token_lists]
        cache = self._word_ids
        if len(cache) > WORD_CACHE_MAX:
            cache.clear()
        new = list({w for ws in words for w in ws if w not in cache})
        if new:
            encs = self.tokenizer.encode_batch([[w] for w in new], is_pretokenized=True, add_special_tokens=False)
            cache.update(zip(new, (e.ids for e in encs)))
        out = []
        for ws in words:
            ids: list[int] = []
            for w in ws:
                ids.extend(cache[w])
                if len(ids) >= max_len:
                    break
            out.append(ids[:max_len])
        return out

    def save(self, path: str | Path) -> None:
        """Write the tokenizer JSON atomically."""
        atomic_write_text(path, self.tokenizer.to_str())

    @classmethod
    def load(cls, path: str | Path) -> "SubwordVocab":
        """Read a vocabulary written by `save`, with an error naming the file when it is missing or bad."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.exists():
            raise FnbodyError(f"{path}: subword vocabulary file not found")
        try:
            return cls(Tokenizer.from_str(path.read_text(encoding="utf-8")))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise FnbodyError(f"{path}: not a valid tokenizer file ({e})") from None


def train_subword_vocab(token_lists: Iterable[Sequence[str]], vocab_size: int = 10_000, min_frequency: int = 2) -> SubwordVocab:
    """Learn a BPE vocabulary of at most `vocab_size` ids from CSN token lists (e.g. a train split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 8:
        raise FnbodyError(f"vocab_size must be >= 8, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    # Words are CSN tokens; we join them with spaces for training and pass them pre-split at encode time.
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False)
    n = 0

    def texts():
        nonlocal n
        for tokens in token_lists:
            n += 1
            yield " ".join(clean_tokens(tokens))

    tok.train_from_iterator(texts(), trainer=trainer)
    if n == 0:
        raise FnbodyError("cannot build a subword vocabulary from no examples")
    return SubwordVocab(tok)

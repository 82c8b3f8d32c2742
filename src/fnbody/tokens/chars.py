"""Character vocabulary for the char-RNN: every symbol seen in training, plus unknown and separator.

Id 0 is the unknown symbol (anything not seen in the training text), id 1 the separator that joins
functions in the training text and marks "end of function" at generation time. Encoding goes
through numpy (code points + `searchsorted`), so tens of millions of characters encode in seconds.
Saved as JSON: the ordered list of symbols, so ids never depend on dict or set order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fnbody.errors import FnbodyError
from fnbody.io import read_json, write_json

UNK_ID = 0
SEP_ID = 1
UNK = "\ufffd"  # how an unknown symbol is shown when decoded
SEP = "\x1e"  # ASCII record separator: never appears in real source, so it can join functions
VOCAB_FORMAT = "fnbody-char-vocab/1"


@dataclass
class CharVocab:
    """An ordered list of symbols; ids 0 and 1 are the unknown symbol and the separator."""

    chars: list[str] = field(default_factory=list)  # the ordinary symbols, ids 2, 3, ...

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise FnbodyError("char vocabulary must list distinct single characters")
        if UNK in self.chars or SEP in self.chars:
            raise FnbodyError("char vocabulary must not contain the unknown or separator symbol")
        self.itos = [UNK, SEP, *self.chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        # Sorted code points -> ids, for vectorised encoding.
        points = np.array([ord(c) for c in self.itos], dtype=np.int64)
        order = np.argsort(points)
        self._sorted_points = points[order]
        self._sorted_ids = order.astype(np.int64)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> "CharVocab":
        """The vocabulary of `texts`: symbols seen at least `min_count` times, most frequent first."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t)
        counts.pop(UNK, None)
        counts.pop(SEP, None)
        chars = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        if not chars:
            raise FnbodyError("cannot build a char vocabulary from empty text")
        return cls(chars)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        """Ids of every character of `text` (unknown symbols -> UNK_ID), as an int64 array."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._sorted_points, points)
        pos = np.minimum(pos, len(self._sorted_points) - 1)
        found = self._sorted_points[pos] == points
        return np.where(found, self._sorted_ids[pos], UNK_ID)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; the separator decodes to SEP and unknown ids to UNK."""
        n = len(self.itos)
        return "".join(self.itos[i] if 0 <= i < n else UNK for i in ids)

    def join(self, texts: Iterable[str]) -> str:
        """The training text: every text followed by the separator."""
        return "".join(t + SEP for t in texts)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (atomically)."""
        write_json(path, {"format": VOCAB_FORMAT, "unk": UNK, "sep": SEP, "chars": self.chars})

    @classmethod
    def load(cls, path: str | Path) -> "CharVocab":
        """Read a vocabulary written by `save`, with an error naming the file when it is not one."""
        path = Path(path)
        if not path.exists():
            raise FnbodyError(f"{path}: char vocabulary not found")
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT or not isinstance(data.get("chars"), list):
            raise FnbodyError(f"{path}: not an fnbody char vocabulary (expected format {VOCAB_FORMAT!r})")
        return cls(list(data["chars"]))

"""Progress bars on stderr (tqdm), one style for every long-running step."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it", disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr with rate and ETA; FNBODY_NO_PROGRESS=1 turns bars off."""
    if disable is None:
        disable = os.environ.get("FNBODY_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, mininterval=0.5, **kwargs)

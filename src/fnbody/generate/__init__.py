"""Generation: one model-agnostic interface for every generator (char-RNN, transformer)."""

from fnbody.generate.base import Completion, GenerationConfig, Generator
from fnbody.generate.stopping import def_indent, truncate_body

__all__ = ["Completion", "GenerationConfig", "Generator", "def_indent", "truncate_body"]

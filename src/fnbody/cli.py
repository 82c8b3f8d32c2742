"""The `fnbody` console script: one parser, subcommands registered by `fnbody.commands.*`.

Each command module exposes `register(sub, groups)`, where `sub` is the top-level subparsers
object and `groups` maps the shared group names ("train", "eval", "search") to their own
subparsers. Heavy imports (torch, transformers) happen inside handlers, never at import time,
so `fnbody --help` and `fnbody corpus ...` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fnbody import __version__
from fnbody.errors import FnbodyError

# Every module listed here must exist; each registers its own subcommands.
COMMAND_MODULES = (
    "fnbody.commands.corpus",
    "fnbody.commands.evaluate",
    "fnbody.commands.search",
    "fnbody.commands.char_rnn",
    "fnbody.commands.lm",
    "fnbody.commands.generate",
    "fnbody.commands.pipeline",
    "fnbody.commands.serve",
)

GROUPS = {
    "train": "train a model (search, char-rnn, lm)",
    "eval": "evaluate samples or models (bleu, humaneval, search, ...)",
    "search": "build and query a code-search index",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fnbody",
        description="Write the body of a Python function from its signature and docstring.",
    )
    parser.add_argument("--version", action="version", version=f"fnbody {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        groups[name] = p.add_subparsers(dest=f"{name}_command", metavar="WHAT")
        p.set_defaults(func=_group_help(p))
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:  # a command module not written yet must not break the others
            if e.name != mod_name:
                raise
            continue
        mod.register(sub, groups)
    return parser


def _group_help(p: argparse.ArgumentParser):
    def show(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    return show


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen command, and turn `FnbodyError` into a one-line error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = func(args)
    except FnbodyError as e:
        print(f"fnbody: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fnbody: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

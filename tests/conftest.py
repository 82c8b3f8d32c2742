"""Shared test settings: quiet progress bars, deterministic threads, the shared data folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("FNBODY_NO_PROGRESS", "1")
# One intra-op thread per process: tests run several processes at once (torchrun, pipeline stages,
# servers), and two threads each on a 2-core machine oversubscribe it badly. Children inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def torchrun(args: list, tmp_path: Path, nproc: int = 2, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone` with `nproc` processes on `args`, output captured.

    TMPDIR is `tmp_path`, so torchelastic's per-run log folders (`torchelastic_*`) are removed with the test's own files
    instead of piling up in /tmp.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), **env})


@pytest.fixture(scope="session")
def csn_sample_dir() -> Path:
    """The 250 real CodeSearchNet rows shipped in ../shared/data/csn-python-sample."""
    path = SHARED / "data" / "csn-python-sample"
    if not path.is_dir():
        pytest.skip(f"shared CSN sample not found at {path}")
    return path


# A small hand-written corpus in the fnbody corpus format, for model tests that must not depend on
# the builder. Functions are real Python with docstrings; prompt + body == code.
_TEMPLATES = [
    ('def add_{i}(a, b):\n    """Return the sum of a and b plus {i}."""\n', '    total = a + b\n    return total + {i}\n'),
    ('def scale_{i}(values, factor={i}):\n    """Multiply every value in a list by a factor."""\n', '    result = []\n    for v in values:\n        result.append(v * factor)\n    return result\n'),
    ('def count_words_{i}(text):\n    """Count how many words appear in a text string."""\n', '    words = text.split()\n    if not words:\n        return 0\n    return len(words)\n'),
    ('def clamp_{i}(x, lo=0, hi={i}):\n    """Clamp a number into the closed range between lo and hi."""\n', '    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n'),
    ('def read_lines_{i}(path):\n    """Read a text file and return its stripped lines."""\n', '    with open(path) as f:\n        lines = [line.strip() for line in f]\n    return lines\n'),
    ('def merge_dicts_{i}(a, b):\n    """Merge two dictionaries into a new one, b winning."""\n', '    out = dict(a)\n    out.update(b)\n    return out\n'),
]


def make_tiny_corpus(root: Path, n_per_split=(48, 12, 12)) -> Path:
    """Write a tiny fnbody corpus (format_version 1) under `root` and return it."""
    import io
    import tokenize

    from fnbody.corpus.io import FORMAT_VERSION, shard_name
    from fnbody.io import write_json, write_jsonl

    def toks(src):
        out = []
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                continue
            if t.type == tokenize.STRING and t.string.startswith('"""'):
                continue
            out.append(t.string)
        return out

    counts = {}
    k = 0
    for split, n in zip(("train", "valid", "test"), n_per_split):
        rows = []
        for j in range(n):
            prompt_t, body_t = _TEMPLATES[k % len(_TEMPLATES)]
            i = k
            k += 1
            prompt, body = prompt_t.format(i=i), body_t.format(i=i)
            code = prompt + body
            doc = prompt.split('"""')[1]
            name = prompt.split("(")[0][4:]
            rows.append({
                "repo": f"tiny/{split}-repo{j % 3}", "path": f"pkg/mod{j % 4}.py", "func_name": name,
                "original_string": code, "language": "python", "code": code, "code_tokens": toks(code),
                "docstring": doc, "docstring_tokens": doc.rstrip(".").split(), "sha": None, "url": None,
                "partition": split, "signature": prompt.splitlines()[0], "prompt": prompt, "body": body, "lineno": 1 + 10 * j,
            })
        write_jsonl(root / split / shard_name(split, 0), rows)
        counts[split] = n
    write_json(root / "manifest.json", {"format_version": FORMAT_VERSION, "counts": counts, "sources": ["tests/conftest.py templates"]})
    return root


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A tiny corpus folder (48 train / 12 valid / 12 test functions)."""
    return make_tiny_corpus(tmp_path / "corpus")

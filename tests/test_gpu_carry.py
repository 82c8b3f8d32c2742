"""benchmarks/gpu_prepare.py pack and benchmarks/gpu_unpack.py: data cut into carry folders comes back byte for byte."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PREPARE = REPO / "benchmarks" / "gpu_prepare.py"
UNPACK = REPO / "benchmarks" / "gpu_unpack.py"


def _stage(tmp_path: Path) -> Path:
    """A staged folder as gpu_prepare makes it: a symlinked corpus folder, a file larger than a pack, small files."""
    corpus = tmp_path / "built" / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train" / "a.jsonl.gz").write_bytes(os.urandom(700))
    (corpus / "manifest.json").write_text(json.dumps({"files": {}}))
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "corpus").symlink_to(corpus)
    (stage / "model.gguf").write_bytes(os.urandom(2500))  # three parts at 1000 bytes a pack
    (stage / "small.txt").write_text("x" * 10)
    return stage


def _run(script: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_pack_then_unpack_in_any_order_restores_every_byte(tmp_path):
    stage = _stage(tmp_path)
    out = tmp_path / "packs"
    r = _run(PREPARE, "pack", stage, "--out", out, "--pack-mib", 1000 / (1 << 20))
    assert r.returncode == 0, r.stderr
    packs = sorted(out.glob("p*"))
    assert len(packs) >= 4  # 2500 bytes in parts of 1000, plus 700 + the small files
    for p in packs:
        assert sum(f.stat().st_size for f in (p / "files").rglob("*") if f.is_file()) <= 1000
    manifest = json.loads((packs[0] / "pack.json").read_text())["files"]
    assert len(manifest["model.gguf"]["parts"]) == 3 and "corpus/train/a.jsonl.gz" in manifest

    dest = tmp_path / "dest"
    for p in reversed(packs[1:]):
        r = _run(UNPACK, p, dest, "--complete")
        assert r.returncode == 1, r.stdout + r.stderr  # not everything is there yet
    assert not (dest / "model.gguf").exists()  # p1 holds one of its parts
    r = _run(UNPACK, packs[0], dest, "--complete")
    assert r.returncode == 0, r.stdout + r.stderr
    for rel in manifest:
        assert (dest / rel).read_bytes() == (stage / rel).read_bytes(), rel
    assert not any((dest / ".parts").rglob("*.part*"))  # joined parts are cleared
    assert f"{len(manifest)} of {len(manifest)} files in place" in r.stdout


def test_unpack_refuses_damaged_bytes_and_writes_nothing(tmp_path):
    stage = _stage(tmp_path)
    out = tmp_path / "packs"
    assert _run(PREPARE, "pack", stage, "--out", out, "--pack-mib", 1).returncode == 0
    packs = sorted(out.glob("p*"))
    assert len(packs) == 1
    victim = packs[0] / "files" / "small.txt"
    victim.write_text("y" * 10)
    r = _run(UNPACK, packs[0], tmp_path / "dest")
    assert r.returncode != 0 and "sha256" in r.stderr and "small.txt" in r.stderr
    assert not (tmp_path / "dest" / "small.txt").exists()
    assert not list((tmp_path / "dest").glob("*.unpacking"))


def test_unpack_names_a_folder_that_is_not_a_pack(tmp_path):
    (tmp_path / "notapack").mkdir()
    r = _run(UNPACK, tmp_path / "notapack", tmp_path / "dest")
    assert r.returncode != 0 and "not a pack made by gpu_prepare.py" in r.stderr

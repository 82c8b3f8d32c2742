"""Unpack one carry folder made by benchmarks/gpu_prepare.py into a data folder, on the device machine.

Usage (on the device, one `run` per pack, each carrying its own folder):
  python3 benchmarks/gpu_unpack.py .gpu/p1 /tmp/g
  ...
  python3 benchmarks/gpu_unpack.py .gpu/p3 /tmp/g --complete && <the GPU job>

Every pack carries the whole manifest (each file's path, size and sha256, and for a file cut into parts, the names of its
parts), so packs can arrive in any order. Whole files are copied into place; parts wait under DEST/.parts until the last
one is there, then are joined. Every file put in place is checked against its sha256 first, and written under a temporary
name and renamed, so a file in DEST is either the one the manifest names or absent. Standard library only: the device's own
python3 runs it before any wheel is installed.

Exit status: 0 when the pack was unpacked (with --complete: and every file of the manifest is now in place), 1 when a file is
missing from the manifest's set (with --complete), 2 on a bad pack or a file whose bytes are not the ones the manifest names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MANIFEST = "pack.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def place(sources: list[Path], dest: Path, sha: str) -> None:
    """Concatenate `sources` into `dest` atomically, refusing bytes whose sha256 is not `sha`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".unpacking")
    with open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    got = sha256_of(tmp)
    if got != sha:
        tmp.unlink()
        raise SystemExit(f"gpu_unpack: {dest}: sha256 {got[:12]} is not the manifest's {sha[:12]}: pack damaged, nothing written")
    os.replace(tmp, dest)


def unpack(pack: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Unpack `pack` into `dest`; (paths now in place, paths still missing)."""
    try:
        manifest = json.loads((pack / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"gpu_unpack: {pack} is not a pack made by gpu_prepare.py ({MANIFEST}: {e})")
    staged = dest / ".parts"
    done, missing = [], []
    for rel, meta in files.items():
        target = dest / rel
        if target.is_file() and target.stat().st_size == meta["size"] and sha256_of(target) == meta["sha256"]:
            done.append(rel)
            continue
        parts = meta.get("parts")
        if not parts:
            src = pack / "files" / rel
            if src.is_file():
                place([src], target, meta["sha256"])
                done.append(rel)
            else:
                missing.append(rel)
            continue
        for part in parts:  # this pack's parts go to the staging folder, to wait for the rest
            src = pack / "files" / part
            if src.is_file() and not (staged / part).is_file():
                (staged / part).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, staged / (part + ".tmp"))
                os.replace(staged / (part + ".tmp"), staged / part)
        if all((staged / p).is_file() for p in parts):
            place([staged / p for p in parts], target, meta["sha256"])
            for p in parts:
                (staged / p).unlink()
            done.append(rel)
        else:
            missing.append(rel)
    return done, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pack", type=Path, help="a folder made by gpu_prepare.py (.gpu/pK)")
    ap.add_argument("dest", type=Path, help="data folder to fill (e.g. /tmp/g)")
    ap.add_argument("--complete", action="store_true", help="exit 1 unless every file of the manifest is now in place")
    args = ap.parse_args(argv)
    done, missing = unpack(args.pack, args.dest)
    print(f"gpu_unpack: {args.pack.name}: {len(done)} of {len(done) + len(missing)} files in place in {args.dest}"
          + (f"; still to come: {', '.join(sorted(missing)[:8])}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    return 1 if args.complete and missing else 0


if __name__ == "__main__":
    sys.exit(main())

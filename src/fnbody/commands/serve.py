"""`fnbody serve RUN`: the HTTP server (OpenAI-compatible completions, search, web page)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from fnbody.errors import FnbodyError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True when `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(sub, groups) -> None:
    p = sub.add_parser("serve", help="serve a generator over HTTP (OpenAI-compatible API and a web page)",
                       description="Serve a trained generator: POST /v1/completions (OpenAI schema, streaming), "
                                   "POST /v1/search, GET /v1/models, GET /health, the OpenAPI spec at /openapi.json, "
                                   "and a web page at /.")
    p.add_argument("run", help="generator run folder (char-rnn or lm)")
    p.add_argument("--search", metavar="INDEX", help="search index folder (from `fnbody search index`) for /v1/search")
    p.add_argument("--search-int8", action="store_true",
                   help="embed /v1/search queries with an int8 copy of the query encoder (CPU; MiniLM ~2x faster, MRR within 0.006)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    from fnbody.commands.generate import add_augment_args, add_model_args

    add_model_args(p)
    p.add_argument("--queue-size", type=int, default=32, help="requests waiting for the model before 429 (default 32)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request, queue wait included (default 120)")
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="request body limit in bytes (default 65536)")
    p.add_argument("--require-body", action="store_true",
                   help="transformers: no completion ends before a body line has begun (for instruct models)")
    add_augment_args(p)
    p.set_defaults(func=cmd_serve)


def check_listen(host: str, port: int) -> None:
    """FnbodyError when nothing can listen on host:port (port taken, address not on this machine): said before the model
    loads, not after. The probe socket is closed at once; the server binds the address again itself."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
            s.bind(addr)
    except OSError as e:
        raise FnbodyError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fnbody.commands.generate import augment_generator, check_augment_args, load_base
    from fnbody.serve.app import ServeSettings, create_app

    if not 0 < args.port < 65536:
        raise FnbodyError(f"--port must be in 1..65535, got {args.port}")
    check_augment_args(args)  # every flag checked before the model loads (~10 s)
    check_listen(args.host, args.port)
    settings = ServeSettings(queue_size=args.queue_size, search_queue_size=args.queue_size,
                             request_timeout_s=args.timeout, max_tokens_cap=args.max_tokens_cap,
                             default_max_tokens=min(256, args.max_tokens_cap), max_body_bytes=args.max_body_bytes, require_body=args.require_body)
    index = None
    if args.search:
        from fnbody.search.index import SearchIndex

        index = SearchIndex.load(args.search, device="cpu", quantize=args.search_int8).warm()
    generator = augment_generator(load_base(args), args)
    if not is_loopback(args.host):
        print(f"fnbody: warning: binding {args.host}: the server has no authentication; anyone who can reach "
              f"this address can use the model", file=sys.stderr)
    app = create_app(generator, index, settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fnbody: serving {generator.name} on http://{shown}:{args.port}/ (OpenAI base_url http://{shown}:{args.port}/v1)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    return 0

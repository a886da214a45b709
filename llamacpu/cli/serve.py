"""`llamacpu serve [MODEL]`: the OpenAI-compatible HTTP server (llamacpu.serving.server).

    llamacpu serve                                     # the embedded SmolLM2-135M-Instruct on 127.0.0.1:8080
    llamacpu serve path/to/model.gguf --port 8000 -np 16 -c 4096 --api-key secret
"""
from __future__ import annotations

import argparse
import os

from .common import add_model_args, load, stderr


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", "--slots", dest="slots", type=int, default=8,
                   help="sequences decoded together (KV-cache slots, each of --ctx-size tokens; default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (default 64)")
    p.add_argument("--api-key", default=os.environ.get("LLAMACPU_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLAMACPU_API_KEY, else none)")
    p.add_argument("--name", help="the model id clients send (default: MODEL as given)")
    p.add_argument("--no-batch-invariant", dest="batch_invariant", action="store_false",
                   default=argparse.SUPPRESS, help="pick kernels by the step's row count (faster at many concurrent sequences on large "
                        "quantized models; a seeded sample then depends on what else runs)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..errors import InputError
    from ..serving.openai_api import Service
    from ..serving.server import serve

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: expected 1..65535, got {args.port}")
    model, tok = load(args, stderr)
    name = args.name or args.model or args.model_pos or "SmolLM2-135M-Instruct"
    service = Service(model, tok, name=name, slots=args.slots, context=args.ctx_size, max_queue=args.max_queue,
                      batch_invariant=getattr(args, "batch_invariant", True))
    stderr(f"serving {name} on http://{args.host}:{args.port}/v1 ({args.slots} slots x {service.engine.context} "
           f"tokens{', API key required' if args.api_key else ''})")
    serve(service, host=args.host, port=args.port, api_key=args.api_key, log_level=args.log_level)
    return 0

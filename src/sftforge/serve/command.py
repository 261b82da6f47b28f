"""`sftforge serve MODEL_DIR`: an OpenAI-compatible API and a web chat page for a trained model folder."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from sftforge.errors import ConfigError
from sftforge.export.merge_inputs import UNMERGEABLE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="the output_dir of `sftforge train` (full, merged or LoRA), or a hub id"
    )
    parser.add_argument(
        "--base", default=None, help="base model of a LoRA folder (default: adapter_config.json's)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key",
        default=os.environ.get("SFTFORGE_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 (default: $SFTFORGE_API_KEY; none = no key)",
    )
    parser.add_argument(
        "--served_model_name", default=None, help="the model id clients see (default: folder name)"
    )
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests decoded together")
    parser.add_argument("--max_queue", type=int, default=256, help="waiting requests before answering 429")
    parser.add_argument("--max_tokens", type=int, default=512, help="answer length when a request sets none")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu … (default: cuda when there is one)"
    )
    parser.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="hf (built in) or vllm (GPU)")
    parser.add_argument("--trust_remote_code", action="store_true")


def run(args: argparse.Namespace) -> int:
    _check(args)
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name or str(args.model)
    if args.engine == "vllm":
        return _run_vllm(args, name)
    import uvicorn

    from sftforge.serve.api import create_app
    from sftforge.serve.engine import Engine
    from sftforge.serve.loading import load_for_inference

    loaded = load_for_inference(
        args.model, args.base, args.trust_remote_code, args.device, args.dtype, source="serve"
    )
    engine = Engine(loaded, max_batch_size=args.max_batch_size, max_queue=args.max_queue)
    app = create_app(engine, name, api_key=args.api_key, default_max_tokens=args.max_tokens)
    where = f"http://{args.host}:{args.port}"
    key_note = " (API key required)" if args.api_key else ""
    print(
        f"sftforge serve: {name} ({loaded.kind}, {loaded.model.device}) on {where}{key_note}\n"
        f"  chat page: {where}/   OpenAI base_url: {where}/v1",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0


def _check(args: argparse.Namespace) -> None:
    problems = []
    if not 0 < args.port < 65536:
        problems.append(f"--port {args.port}: give a port between 1 and 65535")
    for key in ("max_batch_size", "max_queue", "max_tokens"):
        if getattr(args, key) < 1:
            problems.append(f"--{key} {getattr(args, key)}: must be at least 1")
    if problems:
        raise ConfigError(problems, source="serve")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(
            f"sftforge serve: warning: listening on {args.host} without --api_key: anyone who can reach this "
            "machine can use the model.",
            file=sys.stderr,
        )


def _run_vllm(args: argparse.Namespace, name: str) -> int:
    """Hand the folder to vLLM's own OpenAI server (continuous batching, paged attention; GPU). It reads the same
    chat template (tokenizer_config / chat_template.jinja) and stop ids (generation_config.json)."""
    if shutil.which("vllm") is None:
        raise ConfigError(
            "--engine vllm: vLLM is not installed. On a CUDA machine: pip install vllm (see README "
            "'Serve'), or use the built-in engine (--engine hf).",
            source="serve",
        )
    adapter_config = Path(args.model) / "adapter_config.json"
    if adapter_config.is_file() and _peft_type(adapter_config) in UNMERGEABLE:
        raise ConfigError(
            f"--engine vllm: {args.model!r} is a prefix/prompt/P-tuning adapter, which cannot be merged and which "
            "vLLM does not load. Serve it with the built-in engine (--engine hf).",
            source="serve",
        )
    if adapter_config.is_file():
        raise ConfigError(
            f"--engine vllm: {args.model!r} is a LoRA adapter. Merge it first (sftforge merge --adapter "
            f"{args.model} --output {args.model}/merged) and serve the merged folder.",
            source="serve",
        )
    cmd = ["vllm", "serve", str(args.model), "--host", args.host, "--port", str(args.port),
           "--served-model-name", name, "--dtype", args.dtype, "--generation-config", "auto"]  # fmt: skip
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    if args.trust_remote_code:
        cmd.append("--trust-remote-code")
    shown = ["***" if args.api_key and part == args.api_key else part for part in cmd]
    print("sftforge serve: " + " ".join(shown), flush=True)
    os.execvp(cmd[0], cmd)
    return 0  # not reached


def _peft_type(adapter_config: Path) -> str | None:
    import json

    try:
        return json.loads(adapter_config.read_text(encoding="utf-8")).get("peft_type")
    except ValueError:
        return None

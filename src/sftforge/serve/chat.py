"""`sftforge chat MODEL_DIR`: a minimal terminal chat that renders prompts with the model's own chat template
and streams tokens. `/reset` clears the history, `/exit` (or Ctrl-D) quits."""

from __future__ import annotations

import argparse
import sys
from threading import Thread
from typing import Any, TextIO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder (or hub id) with a chat template")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--trust_remote_code", action="store_true")


def load_for_chat(model: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Tokenizer and model of a full, merged or LoRA output folder (see serve/loading.py); generation stops on
    the end-of-turn ids saved at training time."""
    from sftforge.serve.loading import load_for_inference

    loaded = load_for_inference(model, trust_remote_code=trust_remote_code, source="chat")
    loaded.model.generation_config.eos_token_id = loaded.stop_ids or None
    return loaded.tokenizer, loaded.model


def generate_reply(
    tokenizer: Any,
    model: Any,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream: TextIO | None = None,
) -> str:
    """Render with the chat template, generate until an end-of-turn id, optionally streaming text to `stream`."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs = inputs.to(model.device)
    kwargs: dict[str, Any] = dict(**inputs, max_new_tokens=max_new_tokens, do_sample=temperature > 0)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    if stream is None:
        with torch.no_grad():
            out = model.generate(**kwargs)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=lambda: model.generate(**kwargs, streamer=streamer), daemon=True)
    with torch.no_grad():
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            stream.write(piece)
            stream.flush()
        thread.join()
    return "".join(pieces)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tokenizer, model = load_for_chat(args.model, args.trust_remote_code)
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    stdout.write(f"Chatting with {args.model}. /reset clears the history, /exit quits.\n")
    while True:
        stdout.write("\nyou> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # Ctrl-D / end of piped input
            break
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(base)
            stdout.write("(history cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        stdout.write("model> ")
        reply = generate_reply(
            tokenizer, model, history, args.max_new_tokens, args.temperature, args.top_p, stdout
        )
        stdout.write("\n")
        history.append({"role": "assistant", "content": reply})
    return 0

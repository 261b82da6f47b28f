"""`sftforge serve` as users start it: a LoRA output folder served as base + adapter, the CLI on 127.0.0.1, and
mistakes that exit 2 with a message."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch

from sftforge import cli
from sftforge.serve.loading import load_for_inference

from .conftest import free_port


def test_a_lora_folder_loads_as_base_plus_adapter_merged(make_tiny_model, tmp_path):
    from peft import PeftModel

    from ..export.test_merge import make_adapter

    base = make_tiny_model("qwen2")
    adapter = make_adapter(base, tmp_path / "lora")
    loaded = load_for_inference(adapter, device="cpu")
    assert loaded.kind == "lora" and loaded.base == str(base)
    from transformers import AutoModelForCausalLM

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, reference(ids).logits, atol=1e-5)
        assert not torch.allclose(
            loaded.model(ids).logits, AutoModelForCausalLM.from_pretrained(base)(ids).logits
        )


@pytest.mark.slow
def test_the_cli_serves_on_127_0_0_1_with_a_key(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "SFTFORGE_API_KEY": "k1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sftforge", "serve", str(tiny_model_dir), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.3)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        reply = c.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.model == tiny_model_dir.name and reply.usage.completion_tokens <= 3
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        if listening:  # bound to the loopback interface only
            lines = [line for line in listening.splitlines() if f":{port} " in line]
            assert lines and all("127.0.0.1:" in line for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    "args,message",
    [(["serve", "{tmp}"], "neither a model"),
     (["serve", "{model}", "--port", "0"], "--port 0"),
     (["serve", "{model}", "--max_batch_size", "0"], "--max_batch_size 0"),
     (["serve", "{model}", "--engine", "vllm"], "vLLM is not installed")],
)  # fmt: skip
def test_mistakes_exit_2_with_a_message(args, message, tiny_model_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in args]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err

"""End-to-end: `sftforge train` with LoRA / DoRA / QLoRA / freeze and `sftforge merge`, as real CLI subprocesses on
tiny models of two architectures (qwen2: tied embeddings, q/k/v biases; llama: untied head)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ANSWER = "yes it is"
WORDS = ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake"]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # SFTFORGE_CACHE: each test's own (tests/conftest.py), inherited through os.environ
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "sftforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def write_data(tmp_path: Path, answer: str = ANSWER) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {w} a word number {i}?"},
                          {"role": "assistant", "content": answer}]}
            for i, w in enumerate(WORDS * 4)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


COMMON = ("--max_steps", "30", "--per_device_train_batch_size", "8", "--learning_rate", "2e-2",
          "--logging_steps", "5", "--save_strategy", "no", "--report_to", "none", "--seed", "0")  # fmt: skip


def train(tmp_path: Path, model_dir: Path, out: Path, *extra: str, data: Path | None = None):
    data = data or write_data(tmp_path)
    proc = run_cli("train", "--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                   "--output_dir", str(out), *COMMON, *extra, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def greedy(model, tok, text: str, n: int = 12) -> list[int]:
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        return model.generate(**enc, max_new_tokens=n, do_sample=False)[
            0, enc["input_ids"].shape[1] :
        ].tolist()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_train_adapters_then_merge_with_parity(tmp_path, make_tiny_model, arch, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(arch)
    out = tmp_path / "out"
    proc = train(tmp_path, base, out, "--finetuning_type", "lora", "--use_dora", str(method == "dora").lower(),
                 "--merge_after_train", "true")  # fmt: skip

    # trainable == the adapter's parameters, and the summary says so
    metrics = json.loads((out / "metrics.json").read_text())
    adapter_tensors = load_file(out / "adapter_model.safetensors")
    assert adapter_tensors and all("lora_" in k for k in adapter_tensors)  # lora_A/B (+ DoRA magnitude) only
    assert metrics["trainable_params"] == sum(t.numel() for t in adapter_tensors.values())
    base_count = sum(t.numel() for t in load_file(base / "model.safetensors").values())
    assert (
        metrics["total_params"] == base_count + metrics["trainable_params"]
    )  # a tied head counts once in both
    assert f"{metrics['trainable_params'] / 1e6:.2f}M trainable" in proc.stdout
    assert ("DoRA" if method == "dora" else "LoRA") + " r=8 alpha=16" in proc.stdout
    assert (method == "dora") == any("lora_magnitude_vector" in k for k in adapter_tensors)

    # loss decreases (a frozen tiny random base caps how low it can go: its norms and head stay frozen)
    history = losses(out)
    assert len(history) == 6 and history[-1] < history[0] - 0.3, history

    # the folder is an adapter + tokenizer + chat template, and the card says whose adapter it is
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json", "README.md", "sftforge_config.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and f"adapter of the base model `{base}`" in card

    # merge_after_train: parity passed, figures printed and in merge_report.json
    report = json.loads((out / "merged" / "merge_report.json").read_text())
    assert (
        report["passed"]
        and report["merge_max_abs_logit_diff"] <= 1e-4
        and report["saved_max_abs_logit_diff"] <= 1e-4
    )
    assert re.search(r"parity .*max \|Δlogits\| = [0-9.e+-]+ \(limit 0\.0001\).*— ok", proc.stdout)

    # the adapter reloads with PeftModel; the merged folder loads with AutoModelForCausalLM; same greedy tokens
    tok = AutoTokenizer.from_pretrained(out)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert type(merged).__name__.endswith("ForCausalLM") and not hasattr(merged, "peft_config")
    for question in ("Is lake a word number 99?", "What is a river?"):
        assert greedy(merged, tok, question) == greedy(with_adapter, tok, question)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    answer = greedy(merged, tok, "Is lake a word number 99?")
    assert (
        answer[-1] == eot and tok.decode(answer, skip_special_tokens=True) == ANSWER
    )  # it learned the answer


def test_freeze_trains_only_the_last_blocks(tmp_path, make_tiny_model):
    base = make_tiny_model("llama", num_layers=3)
    out = tmp_path / "out"
    proc = train(tmp_path, base, out, "--finetuning_type", "freeze", "--freeze_trainable_layers", "2",
                 "--activation_checkpointing", "true")  # fmt: skip
    assert "freeze: training blocks model.layers.1-2 of 3" in proc.stdout
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        trainable = name.startswith(("model.layers.1.", "model.layers.2."))
        assert changed == trainable, f"{name}: changed={changed}, expected {trainable}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == sum(
        t.numel() for n, t in before.items() if n.startswith(("model.layers.1.", "model.layers.2."))
    )
    assert losses(out)[-1] < losses(out)[0]


def test_resume_from_a_lora_checkpoint_continues_to_the_same_adapter(tmp_path, make_tiny_model):
    base = make_tiny_model("qwen2")
    data = write_data(tmp_path)
    args = ("--finetuning_type", "lora", "--save_strategy", "steps", "--save_steps", "3", "--max_steps", "6",
            "--logging_steps", "1")  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tmp_path, base, straight, *args, data=data)
    assert (straight / "checkpoint-3" / "adapter_model.safetensors").is_file()
    # an interrupted run: only checkpoint-3 exists; resuming it must redo steps 4-6 exactly
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    train(
        tmp_path, base, resumed, *args, "--resume_from_checkpoint", str(resumed / "checkpoint-3"), data=data
    )
    assert json.loads((resumed / "metrics.json").read_text())["global_step"] == 6
    steps_run = [e["step"] for e in json.loads((resumed / "log_history.json").read_text()) if "loss" in e]
    assert steps_run == [1, 2, 3, 4, 5, 6]  # 1-3 restored from the checkpoint's state, 4-6 trained now
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    at_3 = load_file(resumed / "checkpoint-3" / "adapter_model.safetensors")
    assert any(not torch.equal(b[k], at_3[k]) for k in b)  # steps 4-6 did train


def test_new_special_tokens_resize_train_and_merge(tmp_path, make_tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(make_tiny_model("qwen2"), base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": ["<|mark|>"]}, replace_extra_special_tokens=False)
    tok.save_pretrained(base)  # the embedding keeps its old size: the run must grow it
    out = tmp_path / "out"
    data = write_data(tmp_path, answer="<|mark|> yes")
    proc = train(tmp_path, base, out, "--finetuning_type", "lora", "--merge_after_train", "true", data=data)
    assert f"resized to {len(tok)} and trained in full (modules_to_save)" in proc.stdout
    assert any("embed_tokens" in k for k in load_file(out / "adapter_model.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
    assert json.loads((out / "merged" / "merge_report.json").read_text())["passed"]


HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install -e '.[bitsandbytes]')")
@pytest.mark.parametrize(
    ("arch", "bits", "dora"), [("llama", 4, False), ("qwen2", 4, True), ("llama", 8, False)]
)
def test_qlora_trains_and_merges_into_the_full_precision_base(tmp_path, make_tiny_model, arch, bits, dora):
    """On CPU this runs only where bitsandbytes' CPU backend trains the setup (0.50.2 here); on CUDA as usual."""
    from sftforge.config.validate_peft import quantized_cpu_problem

    if not torch.cuda.is_available() and quantized_cpu_problem(bits, "nf4", True, "float32", dora):
        pytest.skip(f"no CUDA and this bitsandbytes' CPU backend cannot train {bits}-bit (DoRA: {dora})")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(arch)
    out = tmp_path / "out"
    proc = train(tmp_path, base, out, "--finetuning_type", "qlora", "--quantization_bit", str(bits),
                 "--use_dora", str(dora).lower(), "--merge_after_train", "true",
                 "--activation_checkpointing", "true")  # fmt: skip
    assert f"Q{'DoRA' if dora else 'LoRA'} ({bits}-bit base, bitsandbytes)" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    adapter_tensors = load_file(out / "adapter_model.safetensors")
    assert metrics["trainable_params"] == sum(t.numel() for t in adapter_tensors.values())
    # 4-bit weights are stored two per byte; the count must still be the real number of weights
    base_count = sum(t.numel() for t in load_file(base / "model.safetensors").values())
    assert metrics["total_params"] == base_count + metrics["trainable_params"]
    history = losses(out)
    assert history[-1] < history[0] - 0.3, history
    assert f"{bits}-bit base; merging into the full-precision base" in proc.stdout
    report = json.loads((out / "merged" / "merge_report.json").read_text())
    assert (
        report["passed"] and report["quantization_bit_in_training"] == bits and report["dtype"] == "float32"
    )
    assert report["merge_max_abs_logit_diff"] <= 1e-4
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not getattr(merged, "is_loaded_in_4bit", False)  # a plain full-precision model, not 4-bit
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    question = "Is lake a word number 99?"
    assert greedy(merged, tok, question) == greedy(with_adapter, tok, question)


@pytest.mark.parametrize("case", ["missing", "mismatch"])
def test_merge_bad_inputs_exit_2_without_traceback(tmp_path, make_tiny_model, case):
    base = make_tiny_model("qwen2")
    if case == "missing":
        adapter = tmp_path / "no-such-adapter"
    else:  # an adapter trained on another base (hidden size 32 vs 64)
        adapter = tmp_path / "out"
        train(
            tmp_path,
            make_tiny_model("qwen2", hidden_size=32),
            adapter,
            "--finetuning_type",
            "lora",
            "--max_steps",
            "2",
        )
    proc = run_cli("merge", "--base", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "m"),
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sftforge merge: error")]
    assert len(errors) == 1
    expected = "does not exist" if case == "missing" else "does not fit the base"
    assert expected in proc.stderr

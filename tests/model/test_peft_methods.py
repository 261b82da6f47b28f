"""peft's prefix tuning, prompt tuning, P-tuning and IA3 on a tiny qwen2: a short run trains only the adapter and
saves an adapter folder; the folder reloads for inference (prompt learning stays an unmerged PeftModel) and
generates; IA3 merges with parity; `sftforge merge` refuses the prompt-learning methods (exit 2, the reason); the
config refuses what cannot work (packing, stray keys, prefix + activation checkpointing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftforge.cli import main as cli_main
from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.serve.chat import generate_reply
from sftforge.serve.loading import load_for_inference
from sftforge.train.run import run_training

METHODS = {
    "prefix": ("PREFIX_TUNING", ["--num_virtual_tokens", "4"]),
    "prompt": ("PROMPT_TUNING", ["--num_virtual_tokens", "4", "--prompt_tuning_init_text", "Answer yes."]),
    "ptuning": ("P_TUNING", ["--num_virtual_tokens", "4", "--encoder_hidden_size", "32"]),
    "ia3": ("IA3", []),
}


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {w} a word {i}?"},
                          {"role": "assistant", "content": "yes it is"}]}
            for i, w in enumerate(["sun", "moon", "star", "tree"] * 4)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _cfg(tmp_path: Path, model_dir: Path, *extra: str):
    return load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(_data(tmp_path)),
                              "--output_dir", str(tmp_path / "out"), "--max_steps", "6", "--report_to", "none",
                              "--per_device_train_batch_size", "8", "--learning_rate", "5e-2",
                              "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1",
                              "--seed", "0", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_tiny_model):
    """Each method trained once for the module: (cfg, metrics, base weights before training)."""
    runs = {}

    def get(method: str):
        if method not in runs:
            tmp = tmp_path_factory.mktemp(method)
            cfg = _cfg(tmp, make_tiny_model("qwen2"), "--finetuning_type", method, *METHODS[method][1])
            runs[method] = (cfg, run_training(cfg))
        return runs[method]

    return get


@pytest.mark.parametrize("method", list(METHODS))
def test_train_save_reload_generate(trained, make_tiny_model, method):
    cfg, metrics = trained(method)
    out = Path(cfg.training.output_dir)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == METHODS[method][0]
    assert not (out / "model.safetensors").exists()  # an adapter folder, like LoRA's
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    assert ("cannot be merged" in card) is (method != "ia3")
    assert ("sftforge merge --base" in card) is (method == "ia3")
    saved = load_file(str(out / "adapter_model.safetensors"))
    base = load_file(str(make_tiny_model("qwen2") / "model.safetensors"))
    assert saved and not (set(saved) & set(base))  # only adapter tensors are saved
    assert 0 < metrics["trainable_params"] < metrics["total_params"] / 10
    saved_numel = sum(t.numel() for t in saved.values())
    if (
        method == "ptuning"
    ):  # peft saves the prompt encoder's output (virtual tokens × hidden), not the encoder
        assert saved_numel == 4 * base["model.embed_tokens.weight"].shape[1]
    else:  # what trained is exactly what was saved: the base stayed frozen
        assert metrics["trainable_params"] == saved_numel
    logs = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert logs[-1] < logs[0], logs  # the adapter learns

    loaded = load_for_inference(out, device="cpu")
    unmerged = method != "ia3"
    assert (loaded.kind == "prompt-learning") is unmerged
    assert hasattr(loaded.model, "peft_config") is unmerged
    tokenizer, model = loaded.tokenizer, loaded.model
    model.generation_config.eos_token_id = loaded.stop_ids
    messages = [{"role": "user", "content": "Is sun a word 0?"}]
    reply = generate_reply(tokenizer, model, messages, max_new_tokens=6)
    assert isinstance(reply, str) and reply  # an untrained tiny model may well answer with whitespace
    # generate (KV cache, peft's virtual tokens): every step's logits == an uncached forward pass of the PeftModel
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]  # fmt: skip
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             eos_token_id=None, min_new_tokens=5, output_scores=True,
                             return_dict_in_generate=True)  # fmt: skip
        for step, scores in enumerate(out.scores):
            prefix = out.sequences[:, : ids.shape[1] + step]
            full = model(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[:, -1]
            assert (scores - full).abs().max().item() < 1e-4, (method, step)
        if unmerged:  # and the adapter matters: the base alone answers differently
            with model.disable_adapter():
                bare = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            assert (out.scores[0] - bare).abs().max().item() > 1e-3


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])
def test_merge_refuses_prompt_learning(trained, make_tiny_model, method, tmp_path, capsys):
    cfg, _ = trained(method)
    code = cli_main(["merge", "--base", str(make_tiny_model("qwen2")), "--adapter", cfg.training.output_dir,
                     "--output", str(tmp_path / "merged")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot be merged" in err and "sftforge chat" in err
    assert not (tmp_path / "merged" / "config.json").exists()


def test_ia3_merge_parity(trained, make_tiny_model, tmp_path):
    cfg, _ = trained("ia3")
    merged = tmp_path / "merged"
    code = cli_main(["merge", "--base", str(make_tiny_model("qwen2")), "--adapter", cfg.training.output_dir,
                     "--output", str(merged), "--dtype", "float32"])  # fmt: skip
    assert code == 0
    report = json.loads((merged / "merge_report.json").read_text())
    print("ia3 merge report:", json.dumps(report)[:600])
    # our own check too: merged logits vs base + adapter (unmerged) on one prompt
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(make_tiny_model("qwen2")), dtype=torch.float32).eval()
    with torch.no_grad():
        tokenizer = AutoTokenizer.from_pretrained(cfg.training.output_dir)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "Is moon a word 1?"}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]  # fmt: skip
        base_logits = base(ids).logits
        unmerged = PeftModel.from_pretrained(base, cfg.training.output_dir).eval()
        diff = (plain(ids).logits - unmerged(input_ids=ids).logits).abs().max().item()
    moved = (plain(ids).logits - base_logits).abs().max().item()
    print(f"ia3 merged vs base+adapter max |dlogit| = {diff:.3g}; vs the base alone {moved:.3g}")
    assert diff <= 1e-4 and moved > 1e-3  # equal to base+adapter, and the adapter changed something


def test_config_refusals(tmp_path, make_tiny_model):
    model_dir = make_tiny_model("qwen2")
    cases = {
        ("--finetuning_type", "prompt", "--packing", "true"): "packing: true cannot be used",
        ("--finetuning_type", "prefix", "--activation_checkpointing", "true"): "prefix tuning does not work",
        ("--finetuning_type", "lora", "--num_virtual_tokens", "8"): "only used with finetuning_type: prefix",
        ("--finetuning_type", "ia3", "--lora_r", "4"): "LoRA settings have no effect",
        ("--finetuning_type", "ptuning", "--merge_after_train", "true"): "cannot be merged",
        ("--finetuning_type", "prompt", "--prompt_tuning_init", "text"): "needs prompt_tuning_init_text",
        ("--finetuning_type", "prompt", "--quantization_bit", "4"): "quantization_bit",
    }
    for args, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            _cfg(tmp_path, model_dir, *args)
    cfg = _cfg(tmp_path, model_dir, "--finetuning_type", "prompt", "--prompt_tuning_init_text", "Hi.")
    assert cfg.peft.prompt_tuning_init == "text"  # giving the text says how to start


@pytest.mark.parametrize("method", [("lora", "--lora_dropout", "0"), ("ia3",)], ids=["lora", "ia3"])
def test_adapters_on_an_moe_model_train_with_the_aux_loss(tmp_path, make_tiny_model, method):
    """LoRA and IA3 on tiny Mixtral: the router aux loss is on (model's coefficient) and logged; IA3's default
    targets are the attention linears (the experts are fused tensors)."""
    cfg = _cfg(tmp_path, make_tiny_model("mixtral"), "--finetuning_type", *method, "--max_steps", "2")
    metrics = run_training(cfg)
    out = Path(cfg.training.output_dir)
    logs = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert all("aux_loss" in e and "router_load_min" in e for e in logs)
    assert metrics["trainable_params"] > 0
    if method[0] == "ia3":
        targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
        assert sorted(targets) == ["k_proj", "v_proj"]


def test_chat_and_eval_loss_with_prompt_learning(trained, monkeypatch, capsys):
    """`sftforge chat` answers with a prompt-tuning folder; `sftforge eval`'s masked loss lines its logits up with
    the input despite the virtual tokens in front."""
    import io

    from sftforge.eval.loss import masked_loss

    cfg, _ = trained("prompt")
    out = cfg.training.output_dir
    monkeypatch.setattr("sys.stdin", io.StringIO("Is sun a word 0?\n/exit\n"))
    assert cli_main(["chat", out, "--max_new_tokens", "4"]) == 0
    assert "model> " in capsys.readouterr().out

    loaded = load_for_inference(out, device="cpu")
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Is sun a word 0?"},
                                    {"role": "assistant", "content": "yes it is"}], tokenize=False)  # fmt: skip
    ids = tok(text, add_special_tokens=False)["input_ids"]
    labels = [-100] * (len(ids) - 5) + ids[-5:]
    result = masked_loss(loaded.model, [{"input_ids": ids, "labels": labels}], tok.pad_token_id)
    with torch.no_grad():  # peft's own loss: labels are shifted past the virtual tokens by peft itself
        own = loaded.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert result.loss == pytest.approx(own, abs=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])
def test_serve_engine_batches_prompt_learning_adapters(trained, method):
    """The batching engine (`sftforge serve`) with a prefix / prompt / P-tuning folder: prompts of different lengths
    in one left-padded batch, plus one joining mid-generation, answer what peft's generate() answers alone."""
    import threading

    from sftforge.serve.engine import Engine, Request
    from sftforge.serve.prompts import PromptBuilder
    from sftforge.serve.sampling import SamplingParams

    cfg, _ = trained(method)
    loaded = load_for_inference(cfg.training.output_dir, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights: an untrained tiny model answers every prompt alike
        for p in loaded.model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    prompts = [
        [{"role": "user", "content": t}] for t in ("Say sun 3 times", "hi", "Name a long river, please now")
    ]
    builder = PromptBuilder(loaded.tokenizer)
    engine = Engine(loaded, max_batch_size=8)
    finals: dict[int, str] = {}
    started, done = threading.Event(), threading.Event()
    limits = [40, 30, 8]

    def emit_for(k: int):  # noqa: ANN202
        def emit(event) -> None:  # noqa: ANN001
            started.set()
            if event.finish_reason:
                finals[k] = event.text
                if len(finals) == len(prompts):
                    done.set()

        return emit

    def request(k: int) -> Request:
        return Request(builder.build(prompts[k]).ids, SamplingParams(max_tokens=limits[k], temperature=0),
                       emit_for(k))  # fmt: skip

    try:
        with engine.condition:  # the first two start as one left-padded batch
            engine.waiting.extend([request(0), request(1)])
            engine.condition.notify()
        assert started.wait(60)
        engine.submit(request(2))  # joins the running batch at the next token
        assert done.wait(120)
    finally:
        engine.close()
    assert engine.batches == 1 and engine.joined == 1
    tok = loaded.tokenizer
    for k, messages in enumerate(prompts):
        ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False, return_tensors="pt")["input_ids"]  # fmt: skip
        with torch.no_grad():
            out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=limits[k], do_sample=False, eos_token_id=loaded.stop_ids,
                                        pad_token_id=tok.pad_token_id)  # fmt: skip
        new = [t for t in out[0, ids.shape[1] :].tolist() if t not in loaded.stop_ids]
        assert finals[k] == tok.decode(new, skip_special_tokens=True), (method, k)
    assert len(set(finals.values())) > 1

"""`sftforge merge`: parity of merged vs base+adapter, the saved folder, and clear failures (exit 1 / exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftforge import cli
from sftforge.export import merge


def make_adapter(base_dir: Path, out: Path, use_dora: bool = False, seed: int = 0) -> Path:
    """An adapter with non-zero B (init_lora_weights=False), so merging really changes the weights."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear",
                        use_dora=use_dora, init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def _prompt_ids(tok) -> dict:
    return tok.apply_chat_template([{"role": "user", "content": "Is lake a word?"}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)  # fmt: skip


@pytest.mark.parametrize(("arch", "dora"), [("qwen2", False), ("llama", True)])
def test_merge_passes_parity_and_the_folder_matches_base_plus_adapter(make_tiny_model, tmp_path, arch, dora):
    base = make_tiny_model(arch)
    adapter = make_adapter(base, tmp_path / "adapter", use_dora=dora)
    report = merge.merge_adapter(str(base), adapter, tmp_path / "merged")
    assert report["passed"] and report["dtype"] == "float32"
    assert report["merge_max_abs_logit_diff"] <= 1e-4 and report["merge_greedy_match"]
    assert report["saved_max_abs_logit_diff"] <= 1e-4 and report["saved_greedy_match"]
    assert report["saved_tensors_identical"]
    assert report["prompts"] == 4 and report["positions_compared"] > 40
    on_disk = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert on_disk["merge_max_abs_logit_diff"] == report["merge_max_abs_logit_diff"]
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (tmp_path / "merged" / name).is_file(), name
    assert not (tmp_path / "merged" / "adapter_config.json").exists()

    # independently of the report: plain transformers, merged folder vs base + PeftModel
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    enc = _prompt_ids(tok)
    with torch.inference_mode():
        diff = (merged(**enc).logits - with_adapter(**enc).logits).abs().max().item()
        plain = AutoModelForCausalLM.from_pretrained(base).eval()
        assert (plain(**enc).logits - merged(**enc).logits).abs().max().item() > 1e-2  # the adapter matters
        a = merged.generate(**enc, max_new_tokens=12, do_sample=False)
        b = with_adapter.generate(**enc, max_new_tokens=12, do_sample=False)
    assert diff <= 1e-4
    assert torch.equal(a, b)


def test_merge_to_bfloat16_in_shards(make_tiny_model, tmp_path):
    base = make_tiny_model("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    report = merge.merge_adapter(
        str(base), adapter, tmp_path / "merged", dtype="bfloat16", max_shard_size="100KB"
    )
    assert report["passed"] and report["dtype"] == "bfloat16"
    assert report["merge_max_abs_logit_diff"] <= 1e-4  # the check itself runs in float32
    assert report["saved_tensors_identical"]  # half-precision files are held to exact equality
    assert 0 < report["cast_max_abs_logit_diff"] < 0.5  # bf16 rounding, reported
    shards = sorted((tmp_path / "merged").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert reloaded.dtype == torch.bfloat16


def test_a_merge_that_fails_parity_exits_1_and_keeps_no_weights(
    make_tiny_model, tmp_path, monkeypatch, capsys
):
    base = make_tiny_model("qwen2")
    adapter = make_adapter(base, tmp_path / "adapter")
    real = merge._merge_and_unload

    def corrupt(peft_model):
        merged = real(peft_model)
        with torch.no_grad():
            merged.model.layers[1].mlp.down_proj.weight[0, 0] += 0.5  # one weight, a plausible merge bug
        return merged

    monkeypatch.setattr(merge, "_merge_and_unload", corrupt)
    code = cli.main(
        ["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "the merged model does not reproduce base+adapter" in err and "Traceback" not in err
    assert not list((tmp_path / "m").glob("*.safetensors")) and not (tmp_path / "m" / "config.json").exists()
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    assert report["passed"] is False and report["merge_max_abs_logit_diff"] > 1e-4


def test_a_saved_folder_that_does_not_reload_identically_exits_1(
    make_tiny_model, tmp_path, monkeypatch, capsys
):
    base = make_tiny_model("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    real = merge._reload

    def reload_corrupted(*args):
        model = real(*args)
        with torch.no_grad():
            model.lm_head.weight[3, 3] += 1.0  # as if a shard were written wrong
        return model

    monkeypatch.setattr(merge, "_reload", reload_corrupted)
    code = cli.main(
        ["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "does not reproduce the merged model" in err and "lm_head.weight" in err
    assert not list((tmp_path / "m").glob("*.safetensors"))
    assert json.loads((tmp_path / "m" / "merge_report.json").read_text())["saved_tensors_differing"] == [
        "lm_head.weight"
    ]


def test_missing_adapter_and_full_model_folder_are_config_errors(make_tiny_model, tmp_path, capsys):
    base = make_tiny_model("qwen2")
    code = cli.main(
        ["merge", "--base", str(base), "--adapter", str(tmp_path / "nope"), "--output", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "adapter_config.json" in err
    code = cli.main(["merge", "--base", str(base), "--adapter", str(base), "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "a full model (config.json), not a LoRA adapter" in err


@pytest.mark.parametrize("mismatch", [{"hidden_size": 32}, {"num_layers": 1}])
def test_adapter_of_another_base_is_a_config_error(make_tiny_model, tmp_path, capsys, mismatch):
    adapter = make_adapter(make_tiny_model("qwen2"), tmp_path / "adapter")
    other = make_tiny_model("qwen2", **mismatch)
    code = cli.main(
        ["merge", "--base", str(other), "--adapter", str(adapter), "--output", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not fit the base" in err and "Pass the base model the adapter was trained on" in err
    assert "Traceback" not in err and not (tmp_path / "m" / "config.json").exists()


def test_output_holding_a_model_needs_overwrite(make_tiny_model, tmp_path, capsys):
    base = make_tiny_model("qwen2")
    adapter = make_adapter(base, tmp_path / "adapter")
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert cli.main(["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        cli.main(
            ["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out), "--overwrite"]
        )
        == 0
    )
    assert json.loads((out / "merge_report.json").read_text())["passed"]

"""LoRA / DoRA / QLoRA / freeze: recipe keys and their checks, what `apply_finetuning` makes trainable, and short
in-process trainings that compare every base weight before and after."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftforge.config import config_to_dict, dump_config, load_config
from sftforge.config.peft_args import PeftArguments
from sftforge.errors import ConfigError
from sftforge.model.peft import apply_finetuning, count_parameters, linear_module_names

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {w} a word?"}, {"role": "assistant", "content": "yes it is"}]}
            for w in ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake"] * 2]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _cfg(data_file: Path, model_dir: Path | str = "m", *overrides: str):
    return load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data_file),
                              "--output_dir", str(data_file.parent / "out"), *overrides])  # fmt: skip


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32
    ), AutoTokenizer.from_pretrained(model_dir)


# ----------------------------------------------------------------------------------------------- config


def test_defaults_are_full_fine_tuning_and_lora_defaults(data_file):
    cfg = _cfg(data_file)
    assert cfg.peft.finetuning_type == "full" and not cfg.peft.is_lora
    assert (cfg.peft.lora_r, cfg.peft.lora_alpha, cfg.peft.lora_dropout) == (8, 16, 0.05)
    assert cfg.peft.lora_target_modules == "all-linear" and cfg.peft.quantization_bit is None
    assert config_to_dict(cfg)["peft"] == {"finetuning_type": "full"}  # no LoRA keys next to `full`


def test_use_peft_is_an_alias_of_lora_with_trl_key_names(data_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\nuse_peft: true\nlora_r: 16\n"
                      "lora_alpha: 32\nlora_dropout: 0.1\nlora_target_modules: [q_proj, v_proj]\n")  # fmt: skip
    cfg = load_config(recipe)
    assert cfg.peft.finetuning_type == "lora" and cfg.peft.is_lora
    assert (cfg.peft.lora_r, cfg.peft.lora_alpha, cfg.peft.lora_dropout) == (16, 32, 0.1)
    assert cfg.peft.lora_target_modules == ["q_proj", "v_proj"]
    assert any("LoRA r=16 alpha=32" in n for n in cfg.notes)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("all-linear", "all-linear"), ("all", "all-linear"), ("q_proj,v_proj", ["q_proj", "v_proj"]),
     ("o_proj", ["o_proj"]), (r".*\.(q|v)_proj", r".*\.(q|v)_proj"), ('["k_proj", "o_proj"]', ["k_proj", "o_proj"])],
)  # fmt: skip
def test_target_modules_forms(data_file, given, expected):
    cfg = _cfg(data_file, "m", "--finetuning_type", "lora", "--lora_target_modules", given)
    assert cfg.peft.lora_target_modules == expected


def test_lora_config_round_trips_through_the_dumped_recipe(data_file, tmp_path):
    cfg = _cfg(data_file, "m", "--finetuning_type", "lora", "--use_dora", "true", "--lora_r", "4",
               "--lora_target_modules", "q_proj,v_proj", "--merge_after_train", "true")  # fmt: skip
    path = dump_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert (
        again.peft.use_dora
        and again.peft.lora_r == 4
        and again.peft.lora_target_modules == ["q_proj", "v_proj"]
    )


def test_contradictions_are_reported_together_with_other_problems(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--model_name_or_path", "m", "--lora_r", "16", "--use_dora", "true",
                           "--freeze_trainable_layers", "3", "--bnb_4bit_quant_type", "fp4",
                           "--lora_dropout", "1.5"])  # fmt: skip
    text = str(e.value)
    assert "no training data" in text  # the other sections' problems are in the same report
    assert "lora_r, lora_dropout, use_dora: LoRA settings have no effect with finetuning_type: full" in text
    assert "freeze_trainable_layers: only used with finetuning_type: freeze" in text
    assert "bnb_4bit_quant_type: only used with 4-bit quantization" in text
    assert "lora_dropout: 1.5 must be in [0, 1)" in text


def test_quantization_needs_a_lora_method_and_a_supported_width(data_file):
    with pytest.raises(ConfigError, match="cannot be trained with finetuning_type: full"):
        _cfg(data_file, "m", "--quantization_bit", "4")
    with pytest.raises(ConfigError, match="quantization_bit: 3 is not supported"):
        _cfg(data_file, "m", "--finetuning_type", "lora", "--quantization_bit", "3")
    with pytest.raises(ConfigError, match="finetuning_type is 'freeze'; keep only one"):
        _cfg(data_file, "m", "--finetuning_type", "freeze", "--use_peft", "true")


def test_quantization_without_bitsandbytes_says_what_to_install(data_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"needs bitsandbytes, which is not installed: pip install"):
        _cfg(data_file, "m", "--finetuning_type", "qlora")


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_qlora_on_cpu_is_refused_when_the_cpu_backend_fails(data_file, monkeypatch):
    import sftforge.config.validate as validate
    import sftforge.config.validate_peft as vp

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(vp, "quantized_cpu_problem", lambda *a: "RuntimeError: no CPU kernel")
    with pytest.raises(ConfigError) as e:
        _cfg(data_file, "m", "--finetuning_type", "qlora")
    assert "4-bit nf4 with LoRA needs a CUDA GPU here" in str(e.value) and "no CPU kernel" in str(e.value)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_qlora_on_cpu_is_accepted_when_the_cpu_backend_trains(data_file):
    from sftforge.config.validate_peft import quantized_cpu_problem

    if quantized_cpu_problem(4, "nf4", True, "float32", False) is not None:
        pytest.skip("this bitsandbytes has no working CPU 4-bit backend")
    cfg = _cfg(data_file, "m", "--finetuning_type", "qlora")
    assert cfg.peft.quantization_bit == 4 and cfg.peft.bnb_4bit_compute_dtype == "float32"
    assert any("bitsandbytes 4-bit on CPU" in n for n in cfg.notes)
    assert config_to_dict(cfg)["peft"]["bnb_4bit_compute_dtype"] == "auto"  # re-resolved where it is read
    assert config_to_dict(load_config(dump_config(cfg, data_file.parent / "q.yaml"))) == config_to_dict(cfg)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_8bit_recipe_resolves_and_round_trips(data_file):
    from sftforge.config.validate_peft import quantized_cpu_problem

    if quantized_cpu_problem(8, "nf4", True, "float32", False) is not None:
        pytest.skip("this bitsandbytes has no working CPU 8-bit backend")
    cfg = _cfg(data_file, "m", "--finetuning_type", "qlora", "--quantization_bit", "8")
    dumped = config_to_dict(cfg)
    assert dumped["peft"] == {"finetuning_type": "qlora", "quantization_bit": 8}  # no 4-bit keys to trip on
    assert config_to_dict(load_config(dump_config(cfg, data_file.parent / "q8.yaml"))) == dumped


# ----------------------------------------------------------------------------------------------- the model


def _lora_param_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("dora", [False, True])
def test_lora_trains_only_adapters_on_every_linear_but_the_head(make_tiny_model, dora):
    model, tok = _load(make_tiny_model("llama"))
    total_before = sum(p.numel() for p in model.parameters())
    peft_model, notes = apply_finetuning(
        model, PeftArguments(finetuning_type="lora", use_dora=dora), tok, False
    )
    trainable, total = count_parameters(peft_model)
    assert trainable == _lora_param_count(peft_model) > 0
    assert all(("lora_" in n) == p.requires_grad for n, p in peft_model.named_parameters())
    assert total == total_before + trainable
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert dora == any("lora_magnitude_vector" in n for n, _ in peft_model.named_parameters())


def test_target_list_and_unknown_target(make_tiny_model):
    model, tok = _load(make_tiny_model("qwen2"))
    peft_model, _ = apply_finetuning(model, PeftArguments(finetuning_type="lora", lora_target_modules=["q_proj", "v_proj"]),
                                     tok, False)  # fmt: skip
    assert {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")} == {
        "q_proj",
        "v_proj",
    }
    model, tok = _load(make_tiny_model("qwen2"))
    with pytest.raises(ConfigError, match=r"lora_target_modules: .*Linear modules in this model: .*q_proj"):
        apply_finetuning(
            model, PeftArguments(finetuning_type="lora", lora_target_modules=["qkv"]), tok, False
        )
    assert "lm_head" in linear_module_names(model)


def test_moe_experts_with_lora_dropout_say_to_set_it_to_0(make_tiny_model):
    """Mixtral's experts are one fused tensor: peft adapts it without dropout, and refuses the 0.05 default."""
    model, tok = _load(make_tiny_model("mixtral"))
    with pytest.raises(
        ConfigError,
        match=r"lora_dropout: 0.05 does not work on this model's mixture-of-experts.*lora_dropout: 0",
    ):
        apply_finetuning(model, PeftArguments(finetuning_type="lora"), tok, False)
    model, tok = _load(make_tiny_model("mixtral"))
    peft_model, _ = apply_finetuning(
        model, PeftArguments(finetuning_type="lora", lora_dropout=0.0), tok, False
    )
    assert count_parameters(peft_model)[0] > 0


def test_freeze_leaves_only_the_last_blocks_trainable(make_tiny_model):
    model, tok = _load(make_tiny_model("qwen2", num_layers=3))
    model, notes = apply_finetuning(
        model, PeftArguments(finetuning_type="freeze", freeze_trainable_layers=2), tok, False
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in trainable)
    assert len(trainable) == 2 * len(
        [n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")]
    )
    assert "model.layers.1-2 of 3" in notes[-1]
    model, tok = _load(make_tiny_model("qwen2", num_layers=3))
    with pytest.raises(ConfigError, match="freeze_trainable_layers: 4, but the model has only 3 blocks"):
        apply_finetuning(
            model, PeftArguments(finetuning_type="freeze", freeze_trainable_layers=4), tok, False
        )


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tied and untied embeddings
def test_new_tokens_resize_and_train_embedding_and_head(make_tiny_model, arch):
    model, tok = _load(make_tiny_model(arch))
    rows = model.get_input_embeddings().weight.shape[0]
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|new_a|>", "<|new_b|>"]}, replace_extra_special_tokens=False
    )
    grow = len(tok) - rows
    assert grow > 0
    peft_model, notes = apply_finetuning(model, PeftArguments(finetuning_type="lora"), tok, False)
    assert peft_model.get_input_embeddings().weight.shape[0] == len(tok)
    assert peft_model.get_output_embeddings().weight.shape[0] == len(tok)
    assert any(f"resized to {len(tok)} and trained" in n for n in notes)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n and "modules_to_save" in n for n in trainable)
    if arch == "llama":  # untied: the head is trained in its own right
        assert any("lm_head" in n and "modules_to_save" in n for n in trainable)
    else:  # tied: the head must stay the trained embedding (peft ensure_weight_tying)
        assert peft_model.get_output_embeddings().weight is peft_model.get_input_embeddings().weight


def test_activation_checkpointing_with_lora_gives_the_same_gradients(make_tiny_model):
    ids = torch.randint(3, 200, (2, 12))

    def lora_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model, tok = _load(make_tiny_model("qwen2"))
        torch.manual_seed(0)  # same LoRA init both times
        peft_model, _ = apply_finetuning(
            model, PeftArguments(finetuning_type="lora", lora_dropout=0.0), tok, checkpointing
        )
        if checkpointing:  # as the Trainer does; reentrant checkpointing needs inputs that require grad
            peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in checkpointed.values())
    assert any(g.abs().sum() > 0 for g in checkpointed.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_qlora_counts_4bit_weights_at_their_real_size(make_tiny_model):
    from sftforge.config.validate_peft import quantized_cpu_problem
    from sftforge.model.load import load_model
    from sftforge.model.quant import is_quantized, quantization_config

    if quantized_cpu_problem(4, "nf4", True, "float32", False) is not None:
        pytest.skip("this bitsandbytes has no working CPU 4-bit backend")
    from sftforge.config.schema import ModelArguments

    model_dir = make_tiny_model("llama")
    plain, tok = _load(model_dir)
    full_count = sum(p.numel() for p in plain.parameters())
    args = PeftArguments(finetuning_type="qlora", quantization_bit=4, bnb_4bit_compute_dtype="float32")
    model = load_model(ModelArguments(model_name_or_path=str(model_dir), torch_dtype="float32", attn_implementation="sdpa"), False,
                       quantization_config(args))  # fmt: skip
    assert is_quantized(model) and type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    peft_model, _ = apply_finetuning(model, args, tok, False)
    trainable, total = count_parameters(peft_model)
    assert trainable == _lora_param_count(peft_model) and total == full_count + trainable


# ------------------------------------------------------------------------ in-process training, weights compared


def _train_in_process(cfg, tamper=None) -> object:
    """The same stages as `run_training` (data → load_model → apply_finetuning → Trainer), keeping the model."""
    from sftforge.model.load import load_model
    from sftforge.model.quant import quantization_config
    from sftforge.train.run import build_trainer, prepare_tokenized_data

    bundle, prepared = prepare_tokenized_data(cfg)
    model = load_model(cfg.model, False, quantization_config(cfg.peft))
    model, _ = apply_finetuning(model, cfg.peft, bundle.tokenizer, False)
    if tamper:
        tamper(model)
    trainer = build_trainer(cfg, bundle, prepared, model)
    trainer.train()
    return trainer


def _changed_base_tensors(model, model_dir: Path) -> list[str]:
    original = load_file(model_dir / "model.safetensors")
    base_state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in model.state_dict().items() if "lora_" not in k}  # fmt: skip
    assert set(original) <= set(base_state)
    return [name for name, tensor in original.items() if not torch.equal(base_state[name], tensor)]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_training_changes_adapters_and_no_base_weight(make_tiny_model, data_file, arch, method):
    model_dir = make_tiny_model(arch)
    cfg = _cfg(data_file, model_dir, "--finetuning_type", "lora", "--use_dora", str(method == "dora"),
               "--max_steps", "8", "--learning_rate", "2e-2", "--per_device_train_batch_size", "8",
               "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1")  # fmt: skip
    trainer = _train_in_process(cfg)
    model = trainer.model
    assert _changed_base_tensors(model, model_dir) == []  # every base tensor, bit for bit
    trainable, _ = count_parameters(model)
    assert trainable == _lora_param_count(model)
    # the adapters did learn (B starts at zero; DoRA's magnitude starts at the weight norm)
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]


def test_base_weight_check_catches_a_trainable_base_weight(make_tiny_model, data_file):
    """Negative control: a base weight left trainable by mistake is updated, and the comparison says which."""
    model_dir = make_tiny_model("llama")
    cfg = _cfg(data_file, model_dir, "--finetuning_type", "lora", "--max_steps", "2", "--learning_rate", "1e-2",
               "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true")  # fmt: skip

    def leak(model):
        model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad_(True)

    trainer = _train_in_process(cfg, tamper=leak)
    assert _changed_base_tensors(trainer.model, model_dir) == ["model.layers.0.self_attn.q_proj.weight"]

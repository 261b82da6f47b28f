"""`sftforge plan`: parameter counts and per-strategy bytes against hand-computed numbers for known configs, the
model-state bytes against a real tiny model after one AdamW step, and the CLI on a local model folder.

Hand-computed numbers are written out from the published configs, term by term, not through the planner's
helpers. torch/transformers are imported only inside the tests that build a real model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sftforge.cli import main
from sftforge.errors import ConfigError
from sftforge.plan import PlanInputs, make_plan, model_states, shape_from_config, strategy_row, total_params
from sftforge.plan.activations import activation_bytes, layer_activation_bytes, logits_bytes
from sftforge.plan.command import format_plan
from sftforge.plan.memory import peft_alternatives, suggestions
from sftforge.plan.shape import lora_params, parameter_tensors

QWEN25_15B = {  # Qwen/Qwen2.5-1.5B config.json
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
LLAMA3_8B = {  # meta-llama/Meta-Llama-3-8B config.json
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}
MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1 config.json
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}
QWEN15_MOE = {  # Qwen/Qwen1.5-MoE-A2.7B config.json
    "model_type": "qwen2_moe",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "tie_word_embeddings": False,
}

# --- Qwen2.5-1.5B by hand --------------------------------------------------------------------------------------
# per layer: q 1536x1536 + bias 1536, k and v 1536x256 + bias 256 each, o 1536x1536, MLP 3 x 1536x8960, 2 norms
Q_LAYER = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
Q_ROOT = 151936 * 1536 + 1536  # tied embedding + final norm
Q_P = 1_543_714_304
Q_TENSORS = 2 + 28 * 12  # embedding, final norm; per layer q/k/v/o weights, 3 biases, 2 norms, 3 MLP weights
# --- Llama-3-8B by hand ----------------------------------------------------------------------------------------
L_LAYER = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
L_ROOT = 2 * 128256 * 4096 + 4096  # untied embedding and LM head + final norm
L_P = 8_030_261_248
L_TENSORS = 3 + 32 * 9


def test_parameter_counts_match_the_published_totals():
    qwen, llama = shape_from_config(QWEN25_15B), shape_from_config(LLAMA3_8B)
    assert Q_ROOT + 28 * Q_LAYER == Q_P == total_params(qwen)
    assert L_ROOT + 32 * L_LAYER == L_P == total_params(llama)
    assert parameter_tensors(qwen) == Q_TENSORS and parameter_tensors(llama) == L_TENSORS
    # published total of Mixtral-8x7B: 46,702,792,704 (8 experts of 3 x 4096x14336, router 8x4096 per layer)
    mixtral = shape_from_config(MIXTRAL_8X7B)
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 8 * 3 * 4096 * 14336 + 8 * 4096 + 2 * 4096
    assert total_params(mixtral) == 2 * 32000 * 4096 + 4096 + 32 * layer == 46_702_792_704


def test_moe_counts_with_shared_expert_and_dense_layers():
    shape = shape_from_config(QWEN15_MOE)
    attn = 4 * 2048 * 2048 + 3 * 2048  # q/k/v/o, q/k/v biases
    sparse = attn + 2 * 2048 + 60 * 2048 + 60 * 3 * 2048 * 1408 + 3 * 2048 * 5632 + 2048  # + shared gate
    assert total_params(shape) == 2 * 151936 * 2048 + 2048 + 24 * sparse == 14_315_784_192  # "14.3B"
    # decoder_sparse_step 2: layers 1, 3, ..., 23 are sparse (12), mlp_only_layers takes layer 1 back to dense
    mixed = shape_from_config({**QWEN15_MOE, "decoder_sparse_step": 2, "mlp_only_layers": [1]})
    dense = attn + 2 * 2048 + 3 * 2048 * 5632
    assert mixed.num_sparse_layers == 11
    assert total_params(mixed) == 2 * 151936 * 2048 + 2048 + 11 * sparse + 13 * dense
    # LoRA on all-linear: the shared expert and its gate are nn.Linear, the routed experts are 3-D tensors
    lora = 8 * (4 * (2048 + 2048) + 3 * (2048 + 5632) + (2048 + 1))
    assert lora_params(shape, 8) == 24 * lora


def test_mixed_precision_bytes_per_strategy_for_8_gpus():
    n, inputs = 8, PlanInputs(num_gpus=8, gpu_memory_gib=80, max_length=4096, batch_size=1)
    for config, p, tensors, root, layer in (
        (QWEN25_15B, Q_P, Q_TENSORS, Q_ROOT, Q_LAYER),
        (LLAMA3_8B, L_P, L_TENSORS, L_ROOT, L_LAYER),
    ):
        shape = shape_from_config(config)
        optim = 12 * p + 4 * tensors  # fp32 master + m + v, and AdamW's step scalar per tensor

        def row(name: str, shape=shape) -> tuple[float, float, float]:
            r = strategy_row(shape, inputs, name, checkpointing=False)
            return r.params, r.grads, r.optim

        # DDP and FSDP2 (not DeepSpeed): sftforge loads fp32 weights for full fine-tuning under bf16 autocast, so the
        # model holds the fp32 masters: 4 (weights) + 4 (gradients) + 8 (m, v) instead of 2 + 2 + 12, and DDP's
        # forward keeps a bf16 copy of every weight for the backward (+2).
        amp_optim = 8 * p + 4 * tensors
        assert row("ddp") == (
            4 * p + 2 * p,
            2 * 4 * p,
            amp_optim,
        )  # DDP's reducer buckets: a second gradient copy
        assert row("zero1") == (2 * p, 2 * p, optim / n)
        assert row("zero2") == (2 * p, 2 * p / n, optim / n)
        sharded = (2 * p / n + (root + 2 * layer) * 2, 2 * p / n + (root + layer) * 2, optim / n)
        assert row("zero3") == pytest.approx(sharded)
        fsdp2 = (4 * p / n + (root + 2 * layer) * 2, 4 * p / n + (root + layer) * 2, amp_optim / n)
        assert row("fsdp2") == pytest.approx(fsdp2)
        assert sum(row("fsdp2")) == pytest.approx(sum(row("zero3")))  # the same bytes, split differently
        with_ckpt = strategy_row(shape, inputs, "ddp", checkpointing=True)
        assert with_ckpt.params == 4 * p + 2 * (root + layer)  # only the recomputed layer's bf16 copies
        assert row("zero3_offload") == ((root + 2 * layer) * 2, (root + layer) * 2, 0.0)
        offload = strategy_row(shape, inputs, "zero3_offload", False)
        assert offload.cpu == 2 * p + optim + 4 * p


def test_activation_and_logit_bytes_by_hand():
    tokens = 4096
    # Qwen2.5-1.5B per layer and token: 2 RMSNorms x ((4 + 2 + 2) * h + 4), q/k/v 2 * (1536 + 2 * 256), the
    # kernel output 2 * 1536 (also o_proj's input), log-sum-exp 4 * 12 heads, SwiGLU 2 * 4 * 8960
    q_layer = 2 * (8 * 1536 + 4) + 2 * (1536 + 512) + 2 * 1536 + 4 * 12 + 8 * 8960
    q_final = 8 * 1536 + 4
    qwen = shape_from_config(QWEN25_15B)
    assert layer_activation_bytes(qwen, sparse=False, act=2) == q_layer == 103_480
    assert activation_bytes(qwen, tokens, 2, False) == tokens * (28 * q_layer + q_final)
    # checkpointing: each layer's bf16 input, one layer recomputed, the final norm
    assert activation_bytes(qwen, tokens, 2, True) == tokens * (28 * 2 * 1536 + q_layer + q_final)
    assert logits_bytes(qwen, tokens) == 12 * tokens * 151936
    llama = shape_from_config(LLAMA3_8B)
    l_layer = 2 * (8 * 4096 + 4) + 2 * (4096 + 2048) + 2 * 4096 + 4 * 32 + 8 * 14336
    assert activation_bytes(llama, tokens, 2, False) == tokens * (32 * l_layer + 8 * 4096 + 4)
    # LoRA r=8, dropout 0.05, frozen base: norms keep only their fp32 input copy and rsqrt; each adapter keeps
    # its fp32 dropout output + a 1-byte mask (q, k, v, gate, up read h; o reads q; down reads I) and 4 * r
    lora_layer = (
        2 * (4 * 1536 + 4)
        + 2 * (1536 + 512) + 2 * 1536 + 4 * 12
        + 3 * 2 * 8960
        + 5 * (5 * 1536 + 1536 + 8960)
        + 7 * 4 * 8
    )  # fmt: skip
    assert layer_activation_bytes(qwen, False, 2, lora=True, lora_r=8, lora_dropout=0.05) == lora_layer


def test_recommendations_for_known_configs():
    inputs = PlanInputs(num_gpus=8, gpu_memory_gib=80, max_length=4096, batch_size=1)
    qwen = make_plan(shape_from_config(QWEN25_15B), inputs)
    assert (qwen.recommended.strategy, qwen.recommended.checkpointing) == ("ddp", False)
    llama = make_plan(shape_from_config(LLAMA3_8B), inputs)
    by = {(r.strategy, r.checkpointing): r for r in llama.rows}
    assert not by["ddp", True].fits and by["zero2", False].fits
    assert by["zero1", False].need > by["zero2", False].need  # ZeRO-1 is shown, never preferred
    assert (llama.recommended.strategy, llama.recommended.checkpointing) == ("zero2", False)
    text = format_plan(llama, "Llama-3-8B")
    assert "recommended: ZeRO-2 without gradient checkpointing" in text
    assert "    sftforge train recipe.yaml --accelerate_config zero2 --num_processes 8\n" in text
    assert "gradient_checkpointing: false" in text and "max_length: 4096" in text


def test_launch_lines_use_the_shipped_config_names_and_span_machines():
    from sftforge.launch_configs import NAMED
    from sftforge.plan.memory import ORDER

    assert {strategy for strategy, _ in ORDER} <= set(NAMED)  # whatever is recommended, its name resolves
    shape = shape_from_config(LLAMA3_8B)
    sixteen = format_plan(make_plan(shape, PlanInputs(num_gpus=16, gpu_memory_gib=80, max_length=4096)), "L")
    assert (
        "    sftforge train recipe.yaml --accelerate_config zero2 --num_processes 16 --num_machines 2 "
        "--machine_rank RANK --main_process_ip HOST\n"
        "    (on each of 2 machines of 8 GPUs: RANK 0 … 1, HOST the address of the machine with RANK 0)\n"
    ) in sixteen
    twelve = format_plan(make_plan(shape, PlanInputs(num_gpus=12, gpu_memory_gib=80, max_length=4096)), "L")
    assert (
        "    sftforge train recipe.yaml --accelerate_config zero2 --num_processes 12\n"
        "    (several machines: add --num_machines, --machine_rank and --main_process_ip)\n"
    ) in twelve


def test_full_fine_tuning_that_needs_cpu_offload_also_shows_the_lora_and_qlora_setups_that_fit():
    shape = shape_from_config(LLAMA3_8B)
    plan = make_plan(shape, PlanInputs(num_gpus=1, gpu_memory_gib=80, max_length=4096))
    assert plan.recommended.strategy == "zero3_offload"
    alternatives = peft_alternatives(plan)
    assert [a.inputs.finetuning_type for a in alternatives] == ["lora", "qlora"]
    for alt in alternatives:  # the same inputs but what is trained, each planned as on its own
        assert alt.inputs == replace(plan.inputs, finetuning_type=alt.inputs.finetuning_type)
        assert (alt.recommended.strategy, alt.recommended.fits) == ("ddp", True)
    text = format_plan(plan, "Llama-3-8B")
    assert "    sftforge train recipe.yaml --accelerate_config zero3_offload --num_processes 1\n" in text
    lora = alternatives[0].recommended
    assert (
        "full fine-tuning fits only with CPU offload (the slowest setup: weights and optimizer states cross PCIe "
        "every step); these fit on the GPUs alone:\n"
        f"lora r=8: DDP without gradient checkpointing (~{lora.need / 1024**3:.1f} of 80 GiB per GPU with headroom)\n"
        "  recipe.yaml:\n    finetuning_type: lora\n"
    ) in text
    assert "qlora r=8: DDP without gradient checkpointing" in text and "    finetuning_type: qlora\n" in text
    # full fine-tuning that fits on the GPUs, and a LoRA plan, show no alternatives
    assert (
        peft_alternatives(make_plan(shape, PlanInputs(num_gpus=8, gpu_memory_gib=80, max_length=4096))) == []
    )
    assert peft_alternatives(make_plan(shape, replace(plan.inputs, finetuning_type="lora"))) == []


def test_single_gpu_sharding_saves_nothing_and_lora_shrinks_states():
    shape = shape_from_config(LLAMA3_8B)
    one = PlanInputs(num_gpus=1, gpu_memory_gib=24, max_length=4096)
    ddp, zero2 = strategy_row(shape, one, "ddp", False), strategy_row(shape, one, "zero2", False)
    zero1 = strategy_row(shape, one, "zero1", False)
    assert (zero1.params, zero1.grads, zero1.optim) == (zero2.params, zero2.grads, zero2.optim)
    # DDP holds the same 16 bytes per parameter (fp32 masters in the model), plus autocast's bf16 weight copies
    assert ddp.params + ddp.grads + ddp.optim == zero2.params + zero2.grads + zero2.optim + 2 * L_P
    lora = model_states(shape, "lora", "mixed", lora_r=16)
    t = 16 * 32 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 3 * (4096 + 14336))
    assert lora.trainable_params == t
    assert lora.params == 2 * t + 2 * L_P and lora.grads == 2 * t and lora.optim == 12 * t + 4 * 2 * 32 * 7
    qlora = model_states(shape, "qlora", "mixed", lora_r=16)
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert qlora.params == pytest.approx(2 * t + linear * (0.5 + 1 / 64 + 4 / 16384) + 2 * (L_P - linear))
    plan = make_plan(
        shape, PlanInputs(num_gpus=1, gpu_memory_gib=24, max_length=4096, finetuning_type="qlora")
    )
    assert not any(r.applies for r in plan.rows if r.strategy in ("zero3", "fsdp2", "zero3_offload"))
    assert plan.recommended.strategy == "ddp" and plan.recommended.checkpointing


def test_nothing_fits_says_what_would_help():
    shape = shape_from_config(LLAMA3_8B)
    inputs = PlanInputs(num_gpus=1, gpu_memory_gib=12, max_length=4096)
    plan = make_plan(shape, inputs)
    assert plan.recommended is None
    assert "max_length: 2048: ZeRO-3+offload +ckpt fits" in suggestions(shape, inputs)
    assert "nothing fits in 12 GiB per GPU" in format_plan(plan, "Llama-3-8B")


def test_bad_inputs_and_configs_are_config_errors():
    with pytest.raises(ConfigError, match="num_gpus must be at least 1"):
        make_plan(shape_from_config(QWEN25_15B), PlanInputs(num_gpus=0))
    with pytest.raises(ConfigError, match="hidden_size"):
        shape_from_config({"model_type": "bert", "vocab_size": 10})
    with pytest.raises(ConfigError, match="n_routed_experts"):
        shape_from_config({**LLAMA3_8B, "model_type": "deepseek_v3", "n_routed_experts": 256})
    unknown = make_plan(shape_from_config({**LLAMA3_8B, "model_type": "phi3"}), PlanInputs())
    assert any("'phi3' is counted as a Llama-style decoder" in n for n in unknown.notes)


def test_cli_errors_without_loading_anything(capsys, tmp_path):
    assert main(["plan", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plan", "--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["plan", "--model", str(tmp_path), "--num_gpus", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftforge plan: error:") and "num_gpus must be at least 1" in err


# --- against real models (torch) ------------------------------------------------------------------------------


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _one_adamw_step(model, vocab_size: int):
    import torch

    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, vocab_size, (2, 16))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    states = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return (
        _tensor_bytes(model.parameters()),
        _tensor_bytes(p.grad for p in params if p.grad is not None),
        _tensor_bytes(states),
    )


@pytest.mark.parametrize("arch", ["qwen2", "llama", "mistral", "qwen3", "gemma", "qwen2_moe", "mixtral"])
def test_fp32_model_states_equal_the_bytes_of_a_real_model(make_tiny_model, arch):
    """Weights, gradients and AdamW states (exp_avg, exp_avg_sq, step) after one step on CPU in fp32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = make_tiny_model(arch)
    shape = shape_from_config(AutoConfig.from_pretrained(path).to_dict())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert total_params(shape) == sum(p.numel() for p in model.parameters())
    planned = model_states(shape, "full", "fp32")
    assert (planned.params, planned.grads, planned.optim) == _one_adamw_step(model, shape.vocab_size)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "qwen2_moe", "mixtral"])
def test_fp32_lora_states_equal_the_bytes_of_a_real_peft_model(make_tiny_model, arch):
    """peft's `all-linear`: every nn.Linear of the layers; on Mixtral also the router and the fused experts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    path = make_tiny_model(arch)
    shape = shape_from_config(AutoConfig.from_pretrained(path).to_dict())
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    planned = model_states(shape, "lora", "fp32", lora_r=4)
    assert planned.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (planned.params, planned.grads, planned.optim) == _one_adamw_step(model, shape.vocab_size)


def _saved_for_backward(path: Path, dtype, lora_dropout: float | None) -> int:
    """Bytes of the distinct storages autograd saves in one forward (weights excluded), batch 2 x 32 tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if lora_dropout is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=lora_dropout))
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    assert loss.requires_grad  # the graph (and what it saved) is alive: no storage was freed and reused
    return sum(saved.values())


@pytest.mark.parametrize(
    ("arch", "lora_dropout"),
    [(a, d) for a in ("qwen2", "llama", "qwen3", "gemma", "qwen2_moe") for d in (None, 0.0, 0.05)]
    + [("mixtral", None), ("mixtral", 0.0)],  # peft refuses dropout on Mixtral's fused experts
)
@pytest.mark.parametrize("precision", ["mixed", "fp32"])
def test_layer_activations_equal_what_autograd_saves(make_tiny_model, arch, lora_dropout, precision):
    """One more layer adds exactly the planned bytes to what autograd keeps for backward (bf16 or fp32 model on
    CPU, sdpa). MoE dispatch bookkeeping is approximate (within 1%)."""
    import torch
    from transformers import AutoConfig

    from sftforge.plan.activations import adapter_input_width, layer_constant_bytes

    dtype, act = (torch.bfloat16, 2) if precision == "mixed" else (torch.float32, 4)
    paths = [make_tiny_model(arch, num_layers=n) for n in (2, 3)]
    measured = _saved_for_backward(paths[1], dtype, lora_dropout) - _saved_for_backward(
        paths[0], dtype, lora_dropout
    )
    shape = shape_from_config(AutoConfig.from_pretrained(paths[1]).to_dict())
    sparse, lora = shape.num_sparse_layers > 0, lora_dropout is not None
    planned = 64 * layer_activation_bytes(shape, sparse, act, lora, 4, lora_dropout or 0.0)
    planned += layer_constant_bytes(shape, sparse, act, lora, 4)
    if lora_dropout:  # CPU dropout keeps its mask in the input's dtype (fp32 here); CUDA's keeps 1-byte bools
        planned += 64 * (4 - 1) * adapter_input_width(shape, sparse)
    assert planned == (pytest.approx(measured, rel=0.01) if sparse else measured)


def test_checkpointed_layer_keeps_only_its_input(make_tiny_model):
    import torch

    def saved(n: int) -> int:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            make_tiny_model("qwen2", num_layers=n), dtype=torch.bfloat16
        )
        model.gradient_checkpointing_enable()
        model.train()
        seen: dict[int, int] = {}
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, model.config.vocab_size, (2, 32))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        assert loss.requires_grad
        return sum(seen.values())

    assert saved(3) - saved(2) == 64 * 2 * 64  # tokens x bf16 x hidden


def test_cli_plans_a_local_model_folder(capsys, tiny_model_dir: Path):
    code = main(
        [
            "plan",
            "--model",
            str(tiny_model_dir),
            "--num_gpus",
            "2",
            "--gpu_memory_gb",
            "24",
            "--max_length",
            "512",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"sftforge plan: {tiny_model_dir} (qwen2): ")
    header = next(line for line in lines if line.startswith("per GPU (MiB)"))
    assert header.split()[3:] == [
        "params",
        "grads",
        "optim",
        "activ.",
        "logits",
        "total",
        "+headroom",
        "fits",
    ]
    labels = [line[:21].strip() for line in lines[lines.index(header) + 1 :][:12]]
    assert labels == [
        "DDP", "DDP +ckpt", "ZeRO-1", "ZeRO-1 +ckpt", "ZeRO-2", "ZeRO-2 +ckpt", "ZeRO-3", "ZeRO-3 +ckpt",
        "FSDP2", "FSDP2 +ckpt", "ZeRO-3+offload", "ZeRO-3+offload +ckpt",
    ]  # fmt: skip
    assert "recommended: DDP without gradient checkpointing" in out
    assert "    sftforge train recipe.yaml --accelerate_config ddp --num_processes 2\n" in out
    # the DDP row prints the planner's numbers for this config, in MiB
    from transformers import AutoConfig

    shape = shape_from_config(AutoConfig.from_pretrained(tiny_model_dir).to_dict())
    ddp = make_plan(shape, PlanInputs(num_gpus=2, gpu_memory_gib=24, max_length=512)).rows[0]
    printed = lines[lines.index(header) + 1].split()
    assert printed[1:9] == [f"{x / 1024**2:.2f}" for x in (ddp.params, ddp.grads, ddp.optim, ddp.activations,
                            ddp.logits, ddp.total, ddp.need)] + ["yes"]  # fmt: skip

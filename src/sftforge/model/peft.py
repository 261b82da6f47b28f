"""Turn a loaded model into what the recipe trains: every weight (full), LoRA / DoRA adapters (peft, on a plain or
bitsandbytes-quantized base), only the last N blocks (freeze), or peft's prefix / prompt / P-tuning / IA3.

Adapters are peft's own (`get_peft_model`), never hand-written layers, so the output folder is a standard peft
adapter that `PeftModel.from_pretrained`, vLLM and `sftforge merge` read.
"""

from __future__ import annotations

import warnings
from typing import Any

from sftforge.config.peft_args import METHOD_KEYS, PeftArguments
from sftforge.errors import ConfigError
from sftforge.model.quant import is_quantized
from sftforge.model.sizes import full_numel, full_shape


def apply_finetuning(
    model: Any, peft_args: PeftArguments, tokenizer: Any, activation_checkpointing: bool
) -> tuple[Any, list[str]]:
    """Return the model to train (a `PeftModel` for lora/qlora) and notes for the start-up summary."""
    notes: list[str] = []
    resized = resize_embeddings_for(model, tokenizer)
    if resized:
        old, new = resized
        notes.append(
            f"vocabulary: the tokenizer has {new} tokens but the embedding had {old} rows; embedding and LM head "
            f"resized to {new} and trained"
            + (" in full (modules_to_save), saved with the adapter" if peft_args.is_lora else "")
        )
    kind = peft_args.finetuning_type
    if kind == "full":
        return model, notes
    if kind == "freeze":
        trained = freeze_all_but_last_blocks(model, peft_args.freeze_trainable_layers)
        if resized:  # the new token rows must learn something
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                for p in module.parameters() if module is not None else ():
                    p.requires_grad_(True)
        frozen = "earlier blocks" if resized else "embeddings, earlier blocks and the head"
        notes.append(f"freeze: training blocks {trained}; {frozen} frozen")
    elif kind in METHOD_KEYS:  # prefix / prompt / ptuning / ia3
        if resized:
            raise ConfigError(
                f"finetuning_type {kind}: the tokenizer has tokens the model's embedding lacks; {kind} cannot train "
                "new embedding rows. Use finetuning_type: lora (which trains them with modules_to_save) or full.",
                source="peft",
            )
        model, note = _apply_other(model, peft_args, tokenizer)
        notes.append(note)
    else:
        model = _apply_lora(model, peft_args, resized is not None)
    if activation_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; peft's recipe: make the inputs require it
        # (transformers 5 also does so when it enables checkpointing on an input_ids model; harmless twice).
        model.enable_input_require_grads()
    return model, notes


def _apply_lora(model: Any, peft_args: PeftArguments, resized: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        # Casts the non-quantized weights (norms, embeddings) to fp32 and freezes everything: peft's QLoRA recipe.
        # Checkpointing is left to the Trainer (activation_checkpointing), which enables it with the user's kwargs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    modules_to_save = list(peft_args.modules_to_save or [])
    tied = _embeddings_tied(model)
    if resized:
        names = [_leaf_name(model, model.get_input_embeddings())]
        if not tied:
            names.append(_leaf_name(model, model.get_output_embeddings()))
        modules_to_save += [n for n in names if n and n not in modules_to_save]
    embedding = _leaf_name(model, model.get_input_embeddings())
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=peft_args.lora_r,
        lora_alpha=peft_args.lora_alpha,
        lora_dropout=peft_args.lora_dropout,
        target_modules=peft_args.lora_target_modules,
        use_dora=peft_args.use_dora,
        use_rslora=peft_args.use_rslora,
        modules_to_save=modules_to_save or None,
        # a tied head must stay tied to the trained embedding copy (peft #2777), or merging breaks it
        ensure_weight_tying=tied and embedding in modules_to_save,
    )
    linear = sorted(linear_module_names(model))  # before peft wraps them (base_layer, default, …)
    try:
        # peft probes a deprecated transformers attribute: not the user's concern
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            return get_peft_model(model, config)
    except ValueError as e:
        if "ParamWrapper" in str(e) and "dropout" in str(e):
            raise ConfigError(
                f"lora_dropout: {peft_args.lora_dropout} does not work on this model's mixture-of-experts weights "
                "(the experts are stored as one tensor, which peft adapts with lora.ParamWrapper, without dropout). "
                "Set lora_dropout: 0, or leave the experts out of lora_target_modules (e.g. q_proj,k_proj,v_proj,"
                "o_proj).",
                source="peft",
            ) from None
        raise ConfigError(
            f"lora_target_modules: {str(e).splitlines()[0]} Linear modules in this model: {', '.join(linear)} "
            "(or use all-linear).",
            source="peft",
        ) from None


def _apply_other(model: Any, peft_args: PeftArguments, tokenizer: Any) -> tuple[Any, str]:
    """peft's prefix tuning, prompt tuning, P-tuning or IA3 on the (frozen) model; the summary note."""
    import peft

    kind, n = peft_args.finetuning_type, peft_args.num_virtual_tokens
    hidden = model.config.get_text_config().hidden_size
    if kind == "prefix":
        config: Any = peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=peft_args.prefix_projection,
            encoder_hidden_size=peft_args.encoder_hidden_size or hidden,
        )  # fmt: skip
        note = f"fine-tuning: prefix tuning, {n} virtual key/value tokens per layer; the base stays frozen"
    elif kind == "prompt":
        text = peft_args.prompt_tuning_init == "text"
        config = peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=peft_args.prompt_tuning_init_text if text else None,
            tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None) if text else None,
        )  # fmt: skip
        start = f"the embeddings of {peft_args.prompt_tuning_init_text!r}" if text else "random"
        note = f"fine-tuning: prompt tuning, {n} virtual tokens (start: {start}); the base stays frozen"
    elif kind == "ptuning":
        size = peft_args.encoder_hidden_size or hidden
        config = peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, encoder_hidden_size=size,
            encoder_reparameterization_type=peft_args.encoder_reparameterization_type,
        )  # fmt: skip
        note = (
            f"fine-tuning: P-tuning, {n} virtual tokens from a {peft_args.encoder_reparameterization_type} prompt "
            f"encoder (hidden {size}); the base stays frozen"
        )
    else:
        target, feedforward = ia3_modules(model, peft_args)
        config = peft.IA3Config(task_type="CAUSAL_LM", target_modules=target, feedforward_modules=feedforward)
        note = (
            f"fine-tuning: IA3 scaling vectors on {_names(target)} (feed-forward: {_names(feedforward) or 'none'});"
            " the base stays frozen"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            model = peft.get_peft_model(model, config)
        if kind != "ia3":
            cache_named_for_peft(model)  # eval_generation generates with it
        return model, note
    except ValueError as e:
        linear = ", ".join(sorted(linear_module_names(model)))
        hint = f" Linear modules in this model: {linear}." if kind == "ia3" else ""
        raise ConfigError(
            f"finetuning_type {kind}: peft refuses: {str(e).splitlines()[0]}{hint}", "peft"
        ) from None


def cache_named_for_peft(peft_model: Any) -> Any:
    """peft 0.21's generate() for prompt learning finds the KV cache as model_kwargs["past_key_values"];
    transformers 5.x names it "cache". Unpatched, prefix tuning generates from the bare base (the prefix is never
    injected) and prompt / P-tuning insert their virtual tokens again at every decoding step. Handing peft the cache
    under the old name (which the model still accepts) makes every step's logits equal an uncached forward pass
    (tests/model/test_peft_methods.py). Also applied to the model being trained, for eval_generation."""
    inner = peft_model.base_model_prepare_inputs_for_generation

    def prepare(*args: Any, **kwargs: Any) -> Any:
        inputs = inner(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    peft_model.base_model_prepare_inputs_for_generation = prepare
    return peft_model


def ia3_modules(model: Any, peft_args: PeftArguments) -> tuple[Any, Any]:
    """IA3's target and feed-forward modules: the recipe's, else k_proj, v_proj (attention) and down_proj
    (feed-forward, scaled at its input) where they are nn.Linear — fused MoE experts are not, so MoE models get
    attention only."""
    from sftforge.config.validate_peft import normalise_target_modules

    target = peft_args.ia3_target_modules
    feedforward = peft_args.ia3_feedforward_modules
    target = normalise_target_modules(target) if target is not None else None
    feedforward = normalise_target_modules(feedforward) if feedforward is not None else None
    if target is None:
        linear = linear_module_names(model)
        target = [m for m in ("k_proj", "v_proj", "down_proj") if m in linear]
        if not target:
            raise ConfigError(
                "finetuning_type ia3: this model has no k_proj/v_proj/down_proj linears; name the modules with "
                f"ia3_target_modules (its linear modules: {', '.join(sorted(linear))}).",
                source="peft",
            )
    if feedforward is None:
        feedforward = [m for m in target if m == "down_proj"] if isinstance(target, list) else []
    return target, feedforward


def _names(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def resize_embeddings_for(model: Any, tokenizer: Any) -> tuple[int, int] | None:
    """Grow the embedding (and a separate head) to the tokenizer's size; (old rows, new rows) or None."""
    rows = full_shape(model.get_input_embeddings().weight)[0]
    if len(tokenizer) <= rows:
        return None
    model.resize_token_embeddings(len(tokenizer))
    return rows, len(tokenizer)


def decoder_blocks(model: Any) -> tuple[str, Any]:
    """The ModuleList of transformer blocks (e.g. `model.layers`), found by the config's layer count."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    count = getattr(base.config.get_text_config(), "num_hidden_layers", None)
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module  # pre-order walk: the block list comes before any list inside a block
    raise ConfigError(
        f"finetuning_type freeze: cannot find the {count} transformer blocks of {type(base).__name__}; "
        "use finetuning_type lora or full.",
        source="peft",
    )


def freeze_all_but_last_blocks(model: Any, n: int) -> str:
    """Freeze every weight except those of the last `n` blocks; returns which blocks train, e.g. '22-23 of 24'."""
    name, blocks = decoder_blocks(model)
    if n > len(blocks):
        raise ConfigError(
            f"freeze_trainable_layers: {n}, but the model has only {len(blocks)} blocks; use at most "
            f"{len(blocks)} (or finetuning_type: full).",
            source="peft",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(blocks)[len(blocks) - n :]:
        for p in block.parameters():
            p.requires_grad_(True)
    first, last = len(blocks) - n, len(blocks) - 1
    return f"{name}.{first}" + (f"-{last}" if last > first else "") + f" of {len(blocks)}"


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); peft's count when it is a PeftModel (4-bit weights are stored two per byte)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(full_numel(p) for p in params if p.requires_grad), sum(full_numel(p) for p in params)


def linear_module_names(model: Any) -> set[str]:
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear4bit", "Linear8bitLt")
    }


def _embeddings_tied(model: Any) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def _leaf_name(model: Any, module: Any) -> str | None:
    if module is None:
        return None
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    return None

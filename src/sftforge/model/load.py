"""Load the tokenizer (with its chat template and a safe pad token) and the model (dtype, attention, use_cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.config.schema import DataArguments, ModelArguments
from sftforge.config.sources import check_source
from sftforge.data.named_templates import is_template_name
from sftforge.data.templates import TemplateInfo, make_renderer, resolve_chat_template
from sftforge.errors import ConfigError, RowError

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class TokenizerBundle:
    tokenizer: Any
    template: TemplateInfo
    template_source: str
    notes: list[str]

    @property
    def end_of_turn(self) -> list[str]:
        """The end-of-turn tokens generation stops on (generation_config's eos), e.g. ["<|im_end|>"]; Harmony:
        <|return|> and <|call|>, not <|end|> (the model goes on after it). The eos token when the template emits
        none."""
        if self.template.end_of_turn:
            return list(self.template.stop_tokens or self.template.end_of_turn)
        return [self.tokenizer.eos_token] if self.tokenizer.eos_token else []

    @property
    def end_of_turn_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(t) for t in self.end_of_turn]


def load_tokenizer(model_args: ModelArguments, data_args: DataArguments) -> TokenizerBundle:
    from transformers import AutoTokenizer

    # From scratch (config_name), the tokenizer may live next to the config
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path or model_args.config_name
    key = next(
        k for k in ("tokenizer_name_or_path", "model_name_or_path", "config_name") if getattr(model_args, k)
    )
    # A missing folder, or a Hub id while offline: said now, not after transformers' retries
    check_source(name, key, revision=model_args.model_revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError) as e:
        hint = (
            "Set tokenizer_name (alias of tokenizer_name_or_path) to a tokenizer folder, e.g. one made by "
            "`sftforge train-tokenizer`: a config for training from scratch holds no tokenizer."
            if name == model_args.config_name and not model_args.tokenizer_name_or_path
            else "Give a local model folder or a hub id (hub ids need network)."
        )
        raise ConfigError(
            f"tokenizer: cannot load {name!r}: {str(e).splitlines()[0]}\n    {hint}",
            source="model_name_or_path",
        ) from None
    notes = add_special_tokens(tokenizer, model_args.new_special_tokens)  # before the template sees them
    own = getattr(tokenizer, "chat_template", None)
    template, source = resolve_chat_template(data_args.chat_template, tokenizer)
    tokenizer.chat_template = (
        template  # saved with the model, so inference renders exactly what we trained on
    )
    notes.insert(0, f"chat template: {source}" + _named_template_note(tokenizer, data_args, own, template))
    try:
        info = TemplateInfo.probe(tokenizer, template)
    except Exception as e:  # a template that cannot render even a plain user/assistant exchange
        raise ConfigError(
            f"chat_template ({source}) fails on a simple user/assistant conversation: {e}. "
            "Check that it fits this tokenizer (bos_token, eos_token), or pass another with chat_template.",
            source="chat_template",
        ) from None
    eot = list(info.end_of_turn)
    if eot:
        stops = list(info.stop_tokens or eot)
        stop_note = "" if stops == eot else f"; generation stops on {', '.join(stops)}"
        notes.append(f"end-of-turn: {', '.join(eot)} (always trained){stop_note}")
    else:
        notes.append(
            f"end-of-turn: the template emits none; {tokenizer.eos_token} is appended to each trained turn"
        )
    if info.has_generation_markers:
        notes.append("assistant spans: the template's {% generation %} markers (checked like any other)")
    notes += _ensure_pad_token(tokenizer, eot)
    return TokenizerBundle(tokenizer, info, source, notes)


def add_special_tokens(tokenizer: Any, tokens: list[str] | None) -> list[str]:
    """LLaMA-Factory's `new_special_tokens`: add them to the tokenizer as special (never split, skipped when
    decoding). The model's embedding grows to match when it is loaded (model/peft.py), and both are saved."""
    if not tokens:
        return []
    before = len(tokenizer)
    tokenizer.add_special_tokens({"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    added = len(tokenizer) - before
    known = len(tokens) - added
    return [
        f"new special tokens: {added} added ({', '.join(tokens)})"
        + (f"; {known} already in the vocabulary, now special" if known else "")
    ]


def _named_template_note(tokenizer: Any, data_args: DataArguments, own: Any, template: str) -> str:
    """A shipped template chosen by name (`template: qwen`) where the tokenizer has its own that renders a plain
    conversation differently: say so, since the tokenizer's own is usually the one the model was tuned with."""
    spec = data_args.chat_template
    if (
        not spec
        or not is_template_name(spec)
        or not isinstance(own, str)
        or not own.strip()
        or own == template
    ):
        return ""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    try:
        theirs, ours = (make_renderer(tokenizer, t, None)(probe, False) for t in (own, template))
        same = theirs == ours
    except RowError:
        same = False
    return "" if same else "; the tokenizer's own template renders differently (template: tokenizer uses it)"


def _ensure_pad_token(tokenizer: Any, end_of_turn: list[str]) -> list[str]:
    """Pick a pad token that is not the end-of-turn token (labels never depend on it; the choice is cosmetic
    for masks but keeps attention_mask-less tools from cutting at the end of turns)."""
    if tokenizer.pad_token is not None:
        return [f"pad token: {tokenizer.pad_token} (the tokenizer's)"]
    vocab = tokenizer.get_vocab()
    for candidate in ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "[PAD]", tokenizer.unk_token):
        if candidate and candidate in vocab and candidate not in end_of_turn:
            tokenizer.pad_token = candidate
            return [f"pad token: {candidate} (tokenizer had none)"]
    if tokenizer.eos_token and tokenizer.eos_token not in end_of_turn:
        tokenizer.pad_token = tokenizer.eos_token
        return [f"pad token: {tokenizer.eos_token} (= eos, which is not the end-of-turn token)"]
    tokenizer.pad_token = tokenizer.eos_token
    return [
        f"pad token: {tokenizer.eos_token} (= eos; labels come from spans, so end-of-turn is still trained)"
    ]


def load_model(
    model_args: ModelArguments,
    gradient_checkpointing: bool,
    quantization_config: Any | None = None,
    tokenizer: Any | None = None,
) -> Any:
    """`quantization_config`: a `BitsAndBytesConfig` (QLoRA, see model/quant.py) — the base loads quantized.
    With `config_name`, a randomly initialised model is built instead (`init_from_config`), sized to `tokenizer`."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype: Any = (
        "auto" if model_args.torch_dtype == "auto" else getattr(torch, _DTYPES[model_args.torch_dtype])
    )
    if model_args.config_name:
        if quantization_config is not None:
            raise ConfigError(
                "config_name builds a randomly initialised model, which cannot be quantized (QLoRA needs trained "
                "weights); drop the quantization or load weights with model_name_or_path.",
                source="config_name",
            )
        model = init_from_config(model_args, tokenizer, torch.float32 if dtype == "auto" else dtype)
        if gradient_checkpointing:
            model.config.use_cache = False
        return model
    check_source(model_args.model_name_or_path, "model_name_or_path", revision=model_args.model_revision)
    extra: dict[str, Any] = {}
    if quantization_config is not None:
        from sftforge.model.quant import quantized_device_map

        extra = {"quantization_config": quantization_config, "device_map": quantized_device_map()}
    if model_args.rope_scaling:  # the rotary embedding is built from the config: it must carry the scaling
        extra["config"] = _scaled_config(model_args)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
            use_safetensors=None,  # prefer safetensors; fall back only when a repo has no .safetensors
            **extra,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model_name_or_path: cannot load {model_args.model_name_or_path!r}: {str(e).splitlines()[0]}",
            source="model",
        ) from None
    # The KV cache is useless in training and conflicts with checkpointing; the saved config turns it back on.
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def _scaled_config(model_args: ModelArguments) -> Any:
    """The model's config with the recipe's rope_scaling applied (model/context.py)."""
    from sftforge.model.context import with_rope_scaling

    config = _read_config(
        model_args, model_args.model_name_or_path, "model_name_or_path", "cannot load", "model"
    )
    return with_rope_scaling(config, model_args.rope_scaling)


def _read_config(model_args: ModelArguments, name: str, key: str, failed: str, source: str) -> Any:
    """AutoConfig of `name`; a folder or id it cannot read is a ConfigError naming `key`."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: {failed} {name!r}: {str(e).splitlines()[0]}", source=source) from None


def init_from_config(model_args: ModelArguments, tokenizer: Any | None, dtype: Any) -> Any:
    """A randomly initialised model from `config_name` + `config_overrides` (run_clm.py's from-scratch path). The
    caller seeds the RNG first (`set_seed(seed)`), so the same seed gives the same weights. The vocabulary and the
    special token ids follow the tokenizer, which is what the model will be trained with."""
    from transformers import AutoModelForCausalLM

    check_source(model_args.config_name, "config_name", revision=model_args.model_revision)
    config = _read_config(
        model_args, model_args.config_name, "config_name", "cannot read a config from", "config_name"
    )
    if model_args.config_overrides:
        config = _override(config, model_args.config_overrides)
    if model_args.rope_scaling:
        from sftforge.model.context import with_rope_scaling

        config = with_rope_scaling(config, model_args.rope_scaling)
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if hasattr(config, key):
                setattr(config, key, getattr(tokenizer, key, None))
    try:
        return AutoModelForCausalLM.from_config(
            config,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"config_name: cannot build a model from {model_args.config_name!r}: {str(e).splitlines()[0]}",
            source="config_name",
        ) from None


def _override(config: Any, text: str) -> Any:
    """run_clm.py's `update_from_string`, then the config rebuilt from its values, so that fields derived from an
    overridden one at construction (Qwen2's per-layer `layer_types` from `num_hidden_layers`) follow it."""
    import copy

    from sftforge.config.validate_pt import parse_overrides

    probe = copy.deepcopy(config)
    try:
        probe.update_from_string(text)  # checks each key exists and converts the value to its type
    except (ValueError, AttributeError) as e:
        raise ConfigError(
            f"config_overrides: {e} (the config's keys: {', '.join(sorted(config.to_dict())[:40])}, ...).",
            source="config_overrides",
        ) from None
    changed = parse_overrides(text)
    values = config.to_dict()
    values.update({key: getattr(probe, key) for key in changed})
    if "num_hidden_layers" in changed and "layer_types" not in changed:
        values.pop("layer_types", None)  # one entry per layer: recomputed for the new depth
    return type(config).from_dict(values)

"""max_length against the model's context length, and the recipe's `rope_scaling` applied to the model's config.

Positions past `max_position_embeddings` were never trained: without RoPE scaling the model meets rotation angles
it never saw, so a max_length above it is refused before any data is tokenized; with scaling (the model's own or
the recipe's) that is what scaling is for, and the start-up summary says so.
"""

from __future__ import annotations

import copy
from typing import Any

from sftforge.errors import ConfigError


def read_config(model_args: Any) -> Any | None:
    """The model's config as `load_model` will build it (config_overrides included); None when it cannot be read
    here (a hub id offline, a broken folder): loading the model then reports it."""
    from transformers import AutoConfig

    name = model_args.config_name or model_args.model_name_or_path
    if not name:
        return None
    try:
        config = AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError):
        return None
    if model_args.config_name and model_args.config_overrides:
        from sftforge.model.load import _override

        try:
            config = _override(config, model_args.config_overrides)
        except ConfigError:
            return None
    return config


def with_rope_scaling(config: Any, scaling: dict[str, Any]) -> Any:
    """A copy of `config` whose rope_parameters are the recipe's `rope_scaling` (keeping the model's rope_theta,
    per layer type where the model has several), checked by transformers; ConfigError naming the key if refused."""
    config = copy.deepcopy(config)
    wanted = {("rope_type" if k == "type" else k): v for k, v in scaling.items()}
    current = getattr(config, "rope_parameters", None) or {}
    nested = config.nested_rope_parameter_keys(current) if current else []

    def merged(old: dict[str, Any] | None) -> dict[str, Any]:
        kept = {k: v for k, v in (old or {}).items() if k in ("rope_theta", "partial_rotary_factor")}
        return {**kept, **wanted}

    config.rope_parameters = {k: merged(current[k]) for k in nested} if nested else merged(current)
    try:
        config.standardize_rope_params()
        config.validate_rope()
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"rope_scaling: {e.args[0] if e.args else e}", "rope_scaling") from None
    return config


def scaling_of(config: Any) -> str | None:
    """The RoPE scaling a config carries ("yarn, factor 4.0"), or None when its positions are not scaled."""
    params = getattr(config, "rope_parameters", None) or {}
    nested = config.nested_rope_parameter_keys(params) if params else []
    for p in [params[k] for k in nested] if nested else [params]:
        kind = (p or {}).get("rope_type", (p or {}).get("type", "default"))
        if kind not in (None, "default"):
            factor = p.get("factor")
            return f"{kind}, factor {factor:g}" if isinstance(factor, (int, float)) else str(kind)
    return None


def check_context_length(model_args: Any, max_length: int) -> list[str]:
    """Notes for the start-up summary; ConfigError when max_length exceeds the model's max_position_embeddings and
    no RoPE scaling (the model's or the recipe's) extends its positions."""
    config = read_config(model_args)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or max_length <= limit:
        return []
    if model_args.rope_scaling:
        config = with_rope_scaling(config, model_args.rope_scaling)
    scaling = scaling_of(config)
    if scaling is None:
        raise ConfigError(
            f"max_length: {max_length} is more than the model's max_position_embeddings ({limit}) and its config "
            "has no RoPE scaling: positions past it were never trained, and unscaled RoPE extrapolates badly "
            f"there. Use max_length: {limit} or less, or extend the context with rope_scaling, e.g. "
            f"{{rope_type: yarn, factor: {-(-max_length // limit)}.0}} (factor ≥ max_length / {limit}).",
            "max_length",
        )
    whose = "the recipe's" if model_args.rope_scaling else "the model's"
    return [
        f"⚠ max_length {max_length} > the model's max_position_embeddings {limit}: positions past it rely on "
        f"{whose} RoPE scaling ({scaling}); check the results at long lengths"
    ]

"""Mixture-of-experts models: the router's load-balancing (auxiliary) loss and what the logs say about routing.

transformers' MoE models (Qwen2-MoE, Qwen3-MoE, Mixtral, …) compute the Switch-Transformer balance loss when asked
(`output_router_logits`) and add `router_aux_loss_coef × aux` to the loss of *that forward*. Under gradient
accumulation the LM loss is normalised over the whole optimizer step (by `num_items_in_batch`), so the model's own
addition would count the aux term once per micro-batch: gradient_accumulation_steps times too much. Training
therefore turns the model's addition off (its `router_aux_loss_coef` attribute, not the saved config) and the
trainer adds `coef × aux / micro-batches` itself: once per optimizer step, the mean over its micro-batches.

The aux loss sees real tokens only: padded batches pass their attention mask to it; packed batches are
padding-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.config.schema import ModelArguments
from sftforge.errors import ConfigError

_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def num_experts(config: Any) -> int:
    """The routed experts per MoE layer (0 for a dense model)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _EXPERT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return 0


def is_moe(config: Any) -> bool:
    return num_experts(config) > 0 and hasattr(config.get_text_config(), "router_aux_loss_coef")


@dataclass
class MoeAuxLoss:
    """What the trainer adds per micro-batch, and the routing statistics it logs (tensors until a log line)."""

    coef: float
    num_experts: int
    top_k: int
    _aux_sum: Any = 0.0
    _aux_count: int = 0
    _load: Any = None  # [layers, experts] top-k assignments of real tokens since the last log line

    def term(self, outputs: Any, inputs: dict[str, Any], micro_batches: int) -> Any:
        """`coef × aux / micro_batches` for this micro-batch (the aux value is also kept for the logs)."""
        aux = getattr(outputs, "aux_loss", None)
        if aux is None or not hasattr(aux, "detach"):
            raise RuntimeError("the model returned no aux_loss although output_router_logits was passed")
        self._aux_sum = self._aux_sum + aux.detach().float()
        self._aux_count += 1
        self._count_load(outputs, inputs.get("attention_mask"))
        return self.coef * aux / micro_batches

    def _count_load(self, outputs: Any, mask: Any) -> None:
        import torch

        logits = getattr(outputs, "router_logits", None)
        if not logits:
            return
        rows = []
        for layer in logits:
            chosen = torch.topk(layer.detach(), self.top_k, dim=-1).indices.reshape(-1)
            weight = (
                torch.ones_like(chosen, dtype=torch.float32)
                if mask is None or mask.numel() * self.top_k != chosen.numel()
                else mask.reshape(-1).to(chosen.device, torch.float32).repeat_interleave(self.top_k)
            )
            counts = torch.zeros(self.num_experts, dtype=torch.float32, device=chosen.device)
            rows.append(counts.scatter_add_(0, chosen, weight))
        load = torch.stack(rows)
        self._load = load if self._load is None else self._load + load

    def annotate(self, logs: dict[str, float]) -> None:
        """Add aux_loss (mean since the last log line) and router_load_max / router_load_min: the busiest and the
        idlest expert's share of the routed tokens, over all MoE layers, as a multiple of a fair share (1.0 = every
        expert equally loaded; 0 = an expert got nothing)."""
        if self._aux_count:
            logs["aux_loss"] = round(float(self._aux_sum) / self._aux_count, 6)
        if self._load is not None:
            share = self._load / self._load.sum(dim=-1, keepdim=True).clamp_min(1.0) * self.num_experts
            logs["router_load_max"] = round(float(share.max()), 4)
            logs["router_load_min"] = round(float(share.min()), 4)
        self._aux_sum, self._aux_count, self._load = 0.0, 0, None


def silence_model_aux(model: Any) -> list[tuple[Any, float]]:
    """Set every module's `router_aux_loss_coef` attribute to 0 (the model then adds nothing to its loss; the
    config keeps its value); returns what to restore."""
    saved = []
    for module in model.modules():
        value = module.__dict__.get("router_aux_loss_coef")
        if isinstance(value, (int, float)):
            saved.append((module, value))
            module.router_aux_loss_coef = 0.0
    return saved


def configure_aux_loss(model: Any, model_args: ModelArguments, explicit: set[str]) -> tuple[Any, str | None]:
    """Resolve the recipe's router_aux_loss_coef / output_router_logits against the loaded model: a `MoeAuxLoss`
    (None when the aux loss is off or the model is dense) and a note for the start-up summary."""
    config = model.config.get_text_config()
    # (a resolved config written by an earlier run lists both keys as null: not a request)
    asked = [
        k
        for k in ("router_aux_loss_coef", "output_router_logits")
        if k in explicit and getattr(model_args, k) is not None
    ]
    if not is_moe(config):
        if asked:
            raise ConfigError(
                f"{', '.join(asked)}: {model_args.model_name_or_path!r} has no router aux loss to set: it is not a "
                f"mixture-of-experts model, or one whose transformers class computes none (its config has no "
                f"router_aux_loss_coef next to {' / '.join(_EXPERT_KEYS)}); remove the key(s).",
                source="model",
            )
        return None, None
    if model_args.router_aux_loss_coef is not None:
        if model_args.router_aux_loss_coef < 0:
            raise ConfigError(
                f"router_aux_loss_coef: {model_args.router_aux_loss_coef} must be >= 0 (0 turns the aux loss "
                "off; 0.001 to 0.02 is usual).",
                source="model",
            )
        config.router_aux_loss_coef = model_args.router_aux_loss_coef  # saved with the model
    coef = float(config.router_aux_loss_coef or 0.0)
    experts = num_experts(config)
    top_k = int(getattr(config, "num_experts_per_tok", None) or getattr(config, "top_k", 2))
    on = model_args.output_router_logits is not False and coef > 0
    if not on:
        why = "output_router_logits: false" if model_args.output_router_logits is False else "coefficient 0"
        return None, f"MoE ({experts} experts, top-{top_k}): router aux loss off ({why})"
    source = "the recipe's" if model_args.router_aux_loss_coef is not None else "the model's"
    note = (
        f"MoE ({experts} experts, top-{top_k}): router aux (load-balancing) loss on, × {coef:g} ({source} "
        "router_aux_loss_coef), added once per optimizer step; logged as aux_loss, router_load_max/min"
    )
    return MoeAuxLoss(coef, experts, top_k), note

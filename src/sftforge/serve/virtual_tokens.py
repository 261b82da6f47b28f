"""Prefix / prompt / P-tuning adapters in the batching engine. Their virtual tokens cannot be merged into weights,
and peft's own forward pass prepends them on every call (right for training, wrong for a decoding step that reuses
a KV cache). So the engine drives the base model and adds the virtual tokens once, at prefill:
- prompt / P-tuning: the virtual token embeddings go in front of the prompt's embeddings;
- prefix: the trained key/value prefix is the KV cache the prompt starts from.
In both the attention mask gets the virtual tokens' columns and positions count them, as in training (the text
starts at position num_virtual_tokens); decoding steps and joins then need nothing special."""

from __future__ import annotations

from typing import Any

import torch


class VirtualTokens:
    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model
        config = peft_model.active_peft_config
        self.count = int(config.num_virtual_tokens)
        self.prefix = str(getattr(config.peft_type, "value", config.peft_type)) == "PREFIX_TUNING"

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, cache_arg: str
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """The base model's prefill arguments for left-padded `ids`/`mask`, the attention mask with the virtual
        tokens' columns in front (what decoding extends), and every column's position."""
        rows = ids.shape[0]
        full = torch.cat([mask.new_ones(rows, self.count), mask], dim=-1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            prompt = self.peft_model.get_prompt(batch_size=rows)
        if self.prefix:  # a DynamicCache holding the prefix: the text's positions follow it
            return (
                {"input_ids": ids, "attention_mask": full, "position_ids": positions[:, self.count :],
                 cache_arg: prompt},
                full,
                positions,
            )  # fmt: skip
        embeds = self.peft_model.get_base_model().get_input_embeddings()(ids)
        inputs = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
        return {"inputs_embeds": inputs, "attention_mask": full, "position_ids": positions}, full, positions

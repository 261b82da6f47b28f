"""A decoder-only model's shape, read from its config dict, and its exact parameter counts.

Pure: takes the plain dict of `AutoConfig.from_pretrained(...).to_dict()` (or a hand-written one), imports nothing
heavy. The counts follow the module definitions of transformers 5 for the architectures in `CHECKED_TYPES`
(checked tensor by tensor against real tiny models in tests/plan); other Llama-style configs are counted the same
way and flagged as unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.errors import ConfigError

# Counted exactly (tests/plan build a tiny model of each and compare with sum(p.numel())).
CHECKED_TYPES = ("qwen2", "llama", "mistral", "qwen3", "gemma", "qwen2_moe", "qwen3_moe", "mixtral")
REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
# MoE layouts the planner does not know (DeepSeek's routed/shared experts, dense-first layers, MLA attention...).
UNSUPPORTED_KEYS = ("n_routed_experts", "kv_lora_rank", "first_k_dense_replace")


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width (also each Mixtral expert's)
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    gemma_norm: bool = False  # Gemma: output = norm(x.float()) * (1 + w), cast back at the end
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one always-on expert with a sigmoid gate
    num_sparse_layers: int = 0  # layers whose MLP is the MoE block; the others are dense
    # peft (0.21, transformers 5) maps `all-linear` on Mixtral to its v4 linears: the router and the fused
    # experts get adapters too (target_parameters); on Qwen-MoE only the real nn.Linear modules do.
    lora_on_experts: bool = False

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_sparse_layers

    @property
    def checked(self) -> bool:
        return self.model_type in CHECKED_TYPES


def _sparse_layers(cfg: dict[str, Any], num_layers: int, num_experts: int) -> int:
    """How many layers hold the MoE block: Qwen-MoE's `mlp_only_layers` and `decoder_sparse_step` rule."""
    if num_experts <= 0:
        return 0
    step = int(cfg.get("decoder_sparse_step") or 1)
    dense = set(cfg.get("mlp_only_layers") or [])
    return sum(1 for i in range(num_layers) if i not in dense and (i + 1) % step == 0)


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """Read the fields the planner needs; a multimodal config's `text_config` is used when it has the sizes."""
    cfg = config
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {
            **cfg["text_config"],
            "model_type": cfg["text_config"].get("model_type", cfg.get("model_type")),
        }
    model_type = str(cfg.get("model_type") or "")
    missing = [k for k in REQUIRED_KEYS if cfg.get(k) is None]
    if missing:
        raise ConfigError(
            f"the model config has no {', '.join(missing)}: is it a decoder-only language model? "
            f"(model_type {model_type or 'unknown'!r})",
            source="the model config",
        )
    unsupported = [k for k in UNSUPPORTED_KEYS if cfg.get(k) is not None]
    if unsupported:
        raise ConfigError(
            f"model_type {model_type!r} has fields the planner does not model ({', '.join(unsupported)}); "
            f"supported layouts: {', '.join(CHECKED_TYPES)} and other Llama-style dense decoders.",
            source="the model config",
        )
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    num_experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    intermediate = cfg.get("intermediate_size")
    if intermediate is None and num_experts == 0:
        raise ConfigError("the model config has no intermediate_size.", source="the model config")
    if model_type in ("qwen2", "qwen2_moe"):  # q/k/v carry a bias, o_proj none (qwen2 hard-codes it)
        qkv_bias, o_bias = bool(cfg.get("qkv_bias", True)), False
    else:
        qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        model_type=model_type,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(intermediate or 0),
        # PretrainedConfig's default; AutoConfig's dict always carries the model class's own value.
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=model_type.startswith("qwen3"),
        gemma_norm=model_type == "gemma",
        num_experts=num_experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or intermediate or 0),
        shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
        num_sparse_layers=_sparse_layers(cfg, layers, num_experts),
        lora_on_experts=model_type == "mixtral",
    )


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts. "linear" = weights of nn.Linear modules inside the decoder layers: what bitsandbytes quantizes
# for QLoRA and what peft's `all-linear` targets. MoE experts are 3-D parameters in transformers 5, not nn.Linear.
# ---------------------------------------------------------------------------------------------------------------


def attention_linears(s: ModelShape) -> list[tuple[int, int]]:
    """(in_features, out_features) of q, k, v, o."""
    h = s.hidden_size
    return [(h, s.q_dim), (h, s.kv_dim), (h, s.kv_dim), (s.q_dim, h)]


def dense_mlp_linears(s: ModelShape, width: int) -> list[tuple[int, int]]:
    """gate, up, down of a SwiGLU/GeGLU MLP of the given width."""
    h = s.hidden_size
    return [(h, width), (h, width), (width, h)]


def sparse_block_linears(s: ModelShape) -> list[tuple[int, int]]:
    """The nn.Linear modules of a MoE block: Qwen2-MoE's shared expert and its 1-output gate (none for Mixtral)."""
    if not s.shared_expert_intermediate_size:
        return []
    return [*dense_mlp_linears(s, s.shared_expert_intermediate_size), (s.hidden_size, 1)]


def layer_linears(s: ModelShape, sparse: bool) -> list[tuple[int, int]]:
    mlp = sparse_block_linears(s) if sparse else dense_mlp_linears(s, s.intermediate_size)
    return attention_linears(s) + mlp


def layer_params(s: ModelShape, sparse: bool) -> int:
    """Every parameter of one decoder layer."""
    h = s.hidden_size
    n = sum(i * o for i, o in layer_linears(s, sparse)) + 2 * h  # + input and post-attention norms
    n += (s.q_dim + 2 * s.kv_dim) * s.qkv_bias + h * s.o_bias
    n += 2 * s.head_dim * s.qk_norm
    if sparse:
        n += s.num_experts * h  # router
        n += s.num_experts * 3 * h * s.moe_intermediate_size  # experts' gate_up_proj and down_proj
    else:
        n += (2 * s.intermediate_size + h) * s.mlp_bias
    return n


def layer_linear_params(s: ModelShape, sparse: bool) -> int:
    return sum(i * o for i, o in layer_linears(s, sparse))


def embedding_params(s: ModelShape) -> int:
    """Input embedding + LM head (counted once when tied) + the final norm: FSDP's root unit."""
    return s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2) + s.hidden_size


def total_params(s: ModelShape) -> int:
    return (
        embedding_params(s)
        + s.num_dense_layers * layer_params(s, sparse=False)
        + s.num_sparse_layers * layer_params(s, sparse=True)
    )


def linear_params(s: ModelShape) -> int:
    """Weights bitsandbytes turns into 4-bit for QLoRA (nn.Linear in the layers; the LM head stays)."""
    return s.num_dense_layers * layer_linear_params(s, False) + s.num_sparse_layers * layer_linear_params(
        s, True
    )


def lora_params(s: ModelShape, rank: int) -> int:
    """Adapter parameters of rank r on every nn.Linear of the layers (peft `all-linear`: not the LM head, not
    the 3-D MoE expert tensors): r * (in + out) per module."""
    per = {sparse: sum(rank * (i + o) for i, o in layer_linears(s, sparse)) for sparse in (False, True)}
    if s.lora_on_experts:
        # router (E x h) as one matrix; per expert gate_up (rank 2r: gate and up were two v4 linears), down (r)
        h, i, e = s.hidden_size, s.moe_intermediate_size, s.num_experts
        per[True] += rank * (h + e) + 2 * rank * e * (h + 2 * i) + rank * e * (i + h)
    return s.num_dense_layers * per[False] + s.num_sparse_layers * per[True]


def largest_layer_params(s: ModelShape) -> int:
    return max(
        layer_params(s, sparse)
        for sparse, n in ((False, s.num_dense_layers), (True, s.num_sparse_layers))
        if n
    )


def parameter_tensors(s: ModelShape) -> int:
    """How many parameter tensors the model has (torch's AdamW keeps a `step` scalar for each)."""
    dense = 4 + 3 * s.qkv_bias + s.o_bias + 2 + 2 * s.qk_norm + 3 + 3 * s.mlp_bias
    sparse = (
        4 + 3 * s.qkv_bias + s.o_bias + 2 + 2 * s.qk_norm + 3 + 4 * bool(s.shared_expert_intermediate_size)
    )
    root = 2 + (not s.tie_word_embeddings)  # embedding, final norm, untied LM head
    return root + s.num_dense_layers * dense + s.num_sparse_layers * sparse


def lora_modules(s: ModelShape) -> int:
    """Modules or parameters that get an adapter (two trainable tensors each: A and B)."""
    sparse = len(layer_linears(s, True)) + 3 * s.lora_on_experts  # + router, gate_up, down
    return s.num_dense_layers * len(layer_linears(s, False)) + s.num_sparse_layers * sparse

"""Bytes that one micro-batch keeps alive for the backward pass: per-layer activations and the loss's logits.

Method of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1):
list every tensor autograd saves for backward, per token, and add them up. Their GPT layer gives
s*b*h*(34 + 5*a*s/h) bytes; the layers here differ (SwiGLU MLP of width I, GQA, RMSNorm computed in fp32, no
dropout, and the 5*a*s/h attention-matrix term is absent because sdpa/flash kernels keep only q, k, v, the
output and a log-sum-exp). What each term is, for a model held in `act` bytes (2 = bf16, 4 = fp32), per token:

  RMSNorm (trainable weight)  4*h (fp32 copy of x) + 4 (rsqrt) + act*h (x*rsqrt) + act*h (output, the next
                              linear's input)
     Gemma's (1 + w) norm     4*h + 4 + 4*h (normed, fp32) + act*h (output)
  attention                   act*(q + 2*kv) (q, k, v after RoPE) + act*q (kernel output, laid out so that it
                              is also o_proj's input) + 4*heads (log-sum-exp, fp32)
  Qwen3 q/k norm              (4 + act) * (q + kv) + 4 * (heads + kv_heads)
  SwiGLU MLP                  act * 4*I (gate out, silu out, up out, their product)
  MoE block, k experts/token  k*act*(2h + 4*I_moe) + 4*E (router probabilities, fp32) + k*32 (dispatch)
     + shared expert          act*(4*I_shared + h) + 2*act

LoRA / QLoRA (frozen base): a frozen linear saves nothing (its input is only needed for its own weight's
gradient), nor does a norm's frozen weight. peft runs adapters in fp32, so each adapter keeps its own fp32 copy
of its input (4 bytes; with lora_dropout > 0 the dropout output plus a 1-byte mask), and its rank-r output.

Gradient checkpointing (HF `gradient_checkpointing_enable`) keeps only each layer's input (act*h per token) and
recomputes one layer at a time in backward, so one layer's full set is alive on top.

Checked on CPU (tests/plan): adding a layer to a tiny model adds exactly these bytes to the storages autograd
saves, for qwen2/llama/qwen3/gemma, full and LoRA, bf16 and fp32 (MoE within 1%).
"""

from __future__ import annotations

from sftforge.plan.shape import ModelShape, attention_linears, dense_mlp_linears, sparse_block_linears

MASK_BYTES = 1  # dropout keeps a bool mask
ADAPTER_BYTES = 4  # peft keeps LoRA weights, and so their inputs, in fp32 (autocast_adapter_dtype=True)
# MoE routing bookkeeping per (token, chosen expert): indices and weights kept by the dispatch (approximate:
# measured 30-40 bytes with transformers 5's default experts kernel on CPU)
DISPATCH_BYTES_PER_ROUTE = 32
LOSS_BYTES_PER_LOGIT = 12  # three fp32 [tokens, vocab] tensors at the start of backward (see logits_bytes)


def _norm(s: ModelShape, act: int, trainable: bool) -> int:
    """Bytes per element of the normalised vector, for one RMSNorm."""
    if not trainable:
        return 4  # only the fp32 copy of x (the frozen weight's product keeps nothing)
    return 8 + act if s.gemma_norm else 4 + 2 * act


def _norms(s: ModelShape, act: int, trainable: bool, width: int, count: int = 1) -> int:
    """`count` RMSNorms over vectors of `width`, per token: the elements plus one fp32 rsqrt per vector."""
    return count * (_norm(s, act, trainable) * width + 4)


def _adapter_inputs(groups: list[tuple[list[int], bool]], act: int, dropout: bool) -> int:
    """Inputs the LoRA A matrices keep. `groups`: per distinct input tensor, the input widths of the adapters
    reading it, and whether that tensor is kept anyway. peft runs adapters in fp32 (`autocast_adapter_dtype`):
    a bf16 input is cast, one fp32 copy per adapter; dropout makes one masked copy per adapter too."""
    if dropout:
        return sum((ADAPTER_BYTES + MASK_BYTES) * w for widths, _ in groups for w in widths)
    if act != ADAPTER_BYTES:
        return sum(ADAPTER_BYTES * w for widths, _ in groups for w in widths)
    return sum(ADAPTER_BYTES * widths[0] for widths, kept in groups if not kept)


def adapter_input_width(s: ModelShape, sparse: bool) -> int:
    """Sum of the input widths of one layer's LoRA adapters (how many elements their dropout masks hold)."""
    return sum(w for widths, _ in _lora_groups(s, sparse) for w in widths)


def _lora_groups(s: ModelShape, sparse: bool) -> list[tuple[list[int], bool]]:
    """q/k/v share the normed input, o reads the attention output (which the kernel keeps), gate/up share the
    second normed input, down reads the SwiGLU product (dense MLP or Qwen2-MoE's shared expert)."""
    groups = [([i for i, _ in attention_linears(s)[:3]], False), ([s.q_dim], True)]
    mlp = sparse_block_linears(s) if sparse else dense_mlp_linears(s, s.intermediate_size)
    if mlp:
        groups += [([w for w, _ in (mlp[:2] + mlp[3:])], False), ([mlp[2][0]], False)]
    return groups


def layer_activation_bytes(
    s: ModelShape,
    sparse: bool,
    act: int,
    lora: bool = False,
    lora_r: int = 8,
    lora_dropout: float = 0.0,
) -> int:
    """Bytes saved for backward by one decoder layer, per token (multiply by batch * sequence length)."""
    h, q, kv, heads = s.hidden_size, s.q_dim, s.kv_dim, s.num_heads
    total = _norms(s, act, not lora, h, count=2)
    total += act * (q + 2 * kv) + act * q + 4 * heads  # what the attention kernel keeps
    if s.qk_norm:  # per head; q_norm's output is RoPE'd before the kernel keeps it
        total += (4 if lora else 4 + act) * (q + kv) + 4 * (heads + s.num_kv_heads)
    if sparse:
        k, i_moe = s.experts_per_token, s.moe_intermediate_size
        trained_experts = not lora or s.lora_on_experts
        # a frozen expert keeps neither its input copy nor the product before down_proj
        total += k * act * ((2 * h + 4 * i_moe) if trained_experts else (3 * i_moe + h)) + 4 * s.num_experts
        total += k * DISPATCH_BYTES_PER_ROUTE
        if lora and s.lora_on_experts:
            total += act * h  # the router's input, kept for its adapter
        if s.shared_expert_intermediate_size:
            i_sh = s.shared_expert_intermediate_size
            total += act * ((3 if lora else 4) * i_sh + h) + 2 * act
    else:
        total += act * (3 if lora else 4) * s.intermediate_size
    if lora:
        groups = _lora_groups(s, sparse)
        total += _adapter_inputs(groups, act, lora_dropout > 0)
        total += ADAPTER_BYTES * lora_r * sum(len(w) for w, _ in groups)  # each A's output, kept by its B
    return total


def layer_constant_bytes(s: ModelShape, sparse: bool, act: int, lora: bool = False, lora_r: int = 8) -> int:
    """Bytes one layer keeps for backward whatever the number of tokens: with peft's LoRA on fused MoE experts
    (Mixtral), the merged expert weights W + BA that each forward materialises; Gemma's fp32 (1 + w) norm
    weights."""
    h, i, e = s.hidden_size, s.moe_intermediate_size, s.num_experts
    total = 2 * 4 * h if s.gemma_norm else 0
    if sparse and lora and s.lora_on_experts:
        total += act * e * (3 * h * i + h)
        if act != ADAPTER_BYTES:  # the experts' fp32 A and B, cast to the weights' dtype for the merge
            total += act * lora_r * e * (2 * (h + 2 * i) + (i + h))
    return total


def final_norm_bytes(s: ModelShape, act: int, lora: bool = False) -> int:
    """Per token: the last RMSNorm before the LM head (with a trainable LM head its output is kept too)."""
    return _norms(s, act, not lora, s.hidden_size)


def activation_bytes(
    s: ModelShape,
    tokens: int,
    act: int,
    checkpointing: bool,
    lora: bool = False,
    lora_r: int = 8,
    lora_dropout: float = 0.0,
) -> int:
    """Activations of one micro-batch of `tokens` tokens (batch * sequence length) at the start of backward."""
    layers = {
        sparse: (
            n,
            tokens * layer_activation_bytes(s, sparse, act, lora, lora_r, lora_dropout)
            + layer_constant_bytes(s, sparse, act, lora, lora_r),
        )
        for sparse, n in ((False, s.num_dense_layers), (True, s.num_sparse_layers))
        if n
    }
    if checkpointing:
        kept = tokens * act * s.hidden_size * s.num_layers + max(one for _, one in layers.values())
    else:
        kept = sum(n * one for n, one in layers.values())
    return kept + tokens * final_norm_bytes(s, act, lora)


def logits_bytes(s: ModelShape, tokens: int) -> int:
    """The loss on [tokens, vocab] logits (transformers' ForCausalLMLoss upcasts them to fp32): at the start of
    backward the saved fp32 log-softmax, its gradient and the logits' gradient are alive together; that
    12 bytes/logit peak is above the forward's (bf16 logits + fp32 copy + log-softmax = 10)."""
    return LOSS_BYTES_PER_LOGIT * tokens * s.vocab_size

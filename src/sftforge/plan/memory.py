"""Per-GPU memory of full / LoRA / QLoRA training under each distributed strategy, and the cheapest one that fits.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, sec. 3.1 and 5): mixed-precision AdamW holds
2 (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 master weights, Adam m and v) bytes per trained parameter;
ZeRO-1 shards the 12 across N GPUs, ZeRO-2 also the gradients, ZeRO-3 (and FSDP2) also the weights. Formulas,
sources and what is approximate: docs/memory_planner.md. Pure: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sftforge.errors import ConfigError
from sftforge.plan.activations import activation_bytes, logits_bytes
from sftforge.plan.shape import (
    ModelShape,
    embedding_params,
    largest_layer_params,
    linear_params,
    lora_modules,
    lora_params,
    parameter_tensors,
    total_params,
)

GIB = 1024**3
HEADROOM_FRACTION = 0.10  # allocator fragmentation, NCCL/temporary buffers
CUDA_CONTEXT_GIB = 1.0  # CUDA context + cuBLAS/NCCL workspaces, outside torch's allocator
ADAM_STEP_BYTES = 4  # torch's AdamW keeps a float32 `step` tensor per parameter tensor
# bitsandbytes NF4 with double quantization (the default here): 4 bits per weight, an 8-bit absmax per block of
# 64 weights, and an fp32 absmax per 256 of those blocks (Dettmers et al. 2023, QLoRA, sec. 3).
QLORA_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
FINETUNING_TYPES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes per weight as the model holds it
    grad: int
    optim: int  # per trained parameter
    act: int  # bytes per activation element


PRECISIONS = {
    "mixed": Precision("mixed", weight=2, grad=2, optim=12, act=2),  # bf16 + fp32 master, m, v
    "fp32": Precision("fp32", weight=4, grad=4, optim=8, act=4),  # fp32 weights, grads, m, v
}

# name -> (label, shards optimizer, shards gradients, shards weights, offloads to CPU)
STRATEGIES: dict[str, tuple[str, bool, bool, bool, bool]] = {
    "ddp": ("DDP", False, False, False, False),
    "zero1": ("ZeRO-1", True, False, False, False),
    "zero2": ("ZeRO-2", True, True, False, False),
    "zero3": ("ZeRO-3", True, True, True, False),
    "fsdp2": ("FSDP2", True, True, True, False),
    "zero3_offload": ("ZeRO-3+offload", True, True, True, True),
}
# Cheapest first. ZeRO-2 moves the same bytes as DDP (ZeRO paper sec. 7), ZeRO-3/FSDP2 1.5x (hidden by overlap
# on one NVLink node), gradient checkpointing costs one more forward (~+33% compute), CPU offload is the slowest.
# ZeRO-1 is never picked: ZeRO-2 needs less memory for the same traffic and no ZeRO-1 config ships.
# ZeRO-3 and FSDP2 need the same memory; FSDP2 is named (native PyTorch, no DeepSpeed), zero3.yaml is the twin.
ORDER: tuple[tuple[str, bool], ...] = (
    ("ddp", False),
    ("zero2", False),
    ("fsdp2", False),
    ("ddp", True),
    ("zero2", True),
    ("fsdp2", True),
    ("zero3_offload", False),
    ("zero3_offload", True),
)


@dataclass(frozen=True)
class PlanInputs:
    num_gpus: int = 1
    gpu_memory_gib: float = 80.0
    max_length: int = 1024
    batch_size: int = 1  # per_device_train_batch_size
    finetuning_type: str = "full"
    lora_r: int = 8
    lora_dropout: float = 0.05
    precision: str = "mixed"

    def check(self) -> None:
        problems = []
        positive = (("num_gpus", "num_gpus"), ("max_length", "max_length"), ("lora_r", "lora_r"))
        for name, flag in (*positive, ("batch_size", "per_device_train_batch_size")):
            if getattr(self, name) < 1:
                problems.append(f"{flag} must be at least 1, got {getattr(self, name)}.")
        if self.gpu_memory_gib <= CUDA_CONTEXT_GIB:
            problems.append(f"gpu_memory_gb must be above {CUDA_CONTEXT_GIB:g}, got {self.gpu_memory_gib:g}.")
        if self.finetuning_type not in FINETUNING_TYPES:
            problems.append(f"finetuning_type must be one of {', '.join(FINETUNING_TYPES)}.")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}.")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if problems:
            raise ConfigError(problems, source="command line")


@dataclass(frozen=True)
class ModelStates:
    """Bytes of the whole model's training state on one GPU, before any sharding."""

    total_params: int
    trainable_params: int
    params: float  # weights: trained working copy + frozen (possibly 4-bit) base
    grads: float
    optim: float


def model_states(s: ModelShape, finetuning_type: str, precision: str, lora_r: int = 8) -> ModelStates:
    p = PRECISIONS[precision]
    total = total_params(s)
    if finetuning_type == "full":
        trainable, tensors, base = total, parameter_tensors(s), 0.0
    else:
        trainable, tensors = lora_params(s, lora_r), 2 * lora_modules(s)
        if finetuning_type == "qlora":
            linear = linear_params(s)
            base = linear * QLORA_BYTES_PER_WEIGHT + (total - linear) * p.weight
        else:
            base = float(total * p.weight)
    return ModelStates(
        total_params=total,
        trainable_params=trainable,
        params=trainable * p.weight + base,
        grads=float(trainable * p.grad),
        optim=float(trainable * p.optim + tensors * ADAM_STEP_BYTES),
    )


@dataclass(frozen=True)
class Row:
    strategy: str
    checkpointing: bool
    params: float = 0.0
    grads: float = 0.0
    optim: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    cpu: float = 0.0  # bytes in CPU RAM, all ranks together (offload)
    need: float = 0.0  # total with headroom
    fits: bool = False
    applies: bool = True

    @property
    def label(self) -> str:
        return STRATEGIES[self.strategy][0] + (" +ckpt" if self.checkpointing else "")

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optim + self.activations + self.logits


def with_headroom(total_bytes: float) -> float:
    return total_bytes * (1 + HEADROOM_FRACTION) + CUDA_CONTEXT_GIB * GIB


def fp32_master_in_model(inputs: PlanInputs, strategy: str) -> bool:
    """sftforge's rule (config/validate.py `_resolve_weights_dtype`): full fine-tuning in mixed precision loads
    fp32 weights and computes under bf16 autocast, so the model itself holds the fp32 masters — except under
    DeepSpeed (the ZeRO rows), which holds bf16 weights and keeps the masters in its optimizer. accelerate's
    FSDP2 likewise keeps the sharded parameters in fp32 under mixed precision."""
    return inputs.finetuning_type == "full" and inputs.precision == "mixed" and strategy in ("ddp", "fsdp2")


def amp_model_states(st: ModelStates, tensors: int) -> ModelStates:
    """The same trained parameters held as fp32 weights (4) + fp32 gradients (4) + Adam m and v (8): the total
    equals the ZeRO paper's 2 + 2 + 12, split differently (which matters once sharding splits it)."""
    t = st.trainable_params
    return ModelStates(
        st.total_params, t, params=4.0 * t, grads=4.0 * t, optim=8.0 * t + tensors * ADAM_STEP_BYTES
    )


def autocast_weight_copies(s: ModelShape, checkpointing: bool) -> float:
    """bf16 copies of fp32 weights that autocast makes in the forward and autograd keeps for the backward (each
    matmul saves the bf16 weight it used): the whole model, or with checkpointing the recomputed layer and the
    root (embeddings/LM head) only. An upper bound: the embedding lookup itself is not cast."""
    return 2.0 * (embedding_params(s) + largest_layer_params(s) if checkpointing else total_params(s))


def _sharded_states(
    s: ModelShape, st: ModelStates, strategy: str, inputs: PlanInputs, checkpointing: bool = False
) -> tuple[float, float, float, float]:
    """(params, grads, optim, cpu) bytes per GPU for one strategy."""
    _, shard_optim, shard_grads, shard_params, offload = STRATEGIES[strategy]
    n, p = inputs.num_gpus, PRECISIONS[inputs.precision]
    full = inputs.finetuning_type == "full"
    if fp32_master_in_model(inputs, strategy):
        st = amp_model_states(st, parameter_tensors(s))
    params = st.params / n if shard_params else st.params
    if fp32_master_in_model(inputs, strategy) and not shard_params:
        params += autocast_weight_copies(s, checkpointing)  # FSDP2 casts its gathered units instead (below)
    grads = st.grads / n if shard_grads else st.grads
    optim = st.optim / n if shard_optim else st.optim
    if strategy == "ddp" and n > 1:
        grads *= 2  # DDP's reducer buckets copy every gradient (gradient_as_bucket_view=False, the default)
    cpu = 0.0
    if shard_params:
        # working set: the FSDP root unit (embeddings, LM head) stays gathered, plus the running and the
        # prefetched layer; the unsharded gradients of the root and one layer wait for their reduce-scatter
        root, layer = embedding_params(s), largest_layer_params(s)
        gathered_params = (root + 2 * layer) * p.weight
        gathered_grads = (root + layer) * p.grad if full else 0
        if offload:  # the shards of weights, optimizer states and fp32 gradients live in CPU RAM
            params, grads, optim = gathered_params, gathered_grads, 0.0
            cpu = st.params + st.optim + st.trainable_params * 4
        else:
            params += gathered_params
            grads += gathered_grads
    return params, grads, optim, cpu


def strategy_row(s: ModelShape, inputs: PlanInputs, strategy: str, checkpointing: bool) -> Row:
    if inputs.finetuning_type == "qlora" and STRATEGIES[strategy][3]:
        # the 4-bit base is loaded whole on every GPU (bitsandbytes, one device_map per process)
        return Row(strategy, checkpointing, applies=False)
    st = model_states(s, inputs.finetuning_type, inputs.precision, inputs.lora_r)
    params, grads, optim, cpu = _sharded_states(s, st, strategy, inputs, checkpointing)
    tokens = inputs.max_length * inputs.batch_size
    act = activation_bytes(
        s,
        tokens,
        PRECISIONS[inputs.precision].act,
        checkpointing,
        lora=inputs.finetuning_type != "full",
        lora_r=inputs.lora_r,
        lora_dropout=inputs.lora_dropout,
    )
    row = Row(strategy, checkpointing, params, grads, optim, float(act), float(logits_bytes(s, tokens)), cpu)
    need = with_headroom(row.total)
    return Row(**{**row.__dict__, "need": need, "fits": need <= inputs.gpu_memory_gib * GIB})


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    inputs: PlanInputs
    states: ModelStates
    rows: list[Row]
    recommended: Row | None
    notes: list[str] = field(default_factory=list)


def recommend(rows: list[Row]) -> Row | None:
    """The first row of ORDER that fits."""
    by_key = {(r.strategy, r.checkpointing): r for r in rows}
    return next((by_key[k] for k in ORDER if k in by_key and by_key[k].fits), None)


def make_plan(s: ModelShape, inputs: PlanInputs) -> Plan:
    inputs.check()
    rows = [strategy_row(s, inputs, name, ckpt) for name in STRATEGIES for ckpt in (False, True)]
    notes = []
    if not s.checked:
        notes.append(
            f"model_type {s.model_type or 'unknown'!r} is counted as a Llama-style decoder; its parameter "
            "count was not checked against the real model class."
        )
    if inputs.finetuning_type == "qlora":
        notes.append("QLoRA loads the 4-bit base whole on every GPU, so ZeRO-3/FSDP2 rows do not apply.")
    st = model_states(s, inputs.finetuning_type, inputs.precision, inputs.lora_r)
    return Plan(s, inputs, st, rows, recommend(rows), notes)


def needs_offload(row: Row) -> bool:
    return STRATEGIES[row.strategy][4]


def peft_alternatives(plan: Plan) -> list[Plan]:
    """When full fine-tuning fits only with CPU offload, or not at all: the LoRA and QLoRA plans (same GPUs,
    lengths, batch and rank) whose recommended setup fits on the GPUs alone, LoRA first."""
    rec = plan.recommended
    if plan.inputs.finetuning_type != "full" or (rec is not None and not needs_offload(rec)):
        return []
    plans = [make_plan(plan.shape, replace(plan.inputs, finetuning_type=kind)) for kind in ("lora", "qlora")]
    return [p for p in plans if p.recommended is not None and not needs_offload(p.recommended)]


def suggestions(s: ModelShape, inputs: PlanInputs) -> list[str]:
    """When nothing fits: which single change would make something fit, and what."""
    out = []

    def first_fit(**change) -> Row | None:
        return make_plan(s, PlanInputs(**{**inputs.__dict__, **change})).recommended

    for n in (2, 4, 8, 16, 32, 64, 128):
        if n > inputs.num_gpus and (row := first_fit(num_gpus=n)):
            out.append(f"{n} GPUs: {row.label} fits")
            break
    for kind in ("lora", "qlora"):
        if FINETUNING_TYPES.index(kind) > FINETUNING_TYPES.index(inputs.finetuning_type) and (
            row := first_fit(finetuning_type=kind)
        ):
            out.append(f"finetuning_type: {kind}: {row.label} fits")
            break
    length = inputs.max_length // 2
    while length >= 128:
        if row := first_fit(max_length=length):
            out.append(f"max_length: {length}: {row.label} fits")
            break
        length //= 2
    if inputs.batch_size > 1 and (row := first_fit(batch_size=1)):
        out.append(f"per_device_train_batch_size: 1 (with gradient_accumulation_steps): {row.label} fits")
    return out

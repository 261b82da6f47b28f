"""The typed config tree: model, data and training (a `transformers.TrainingArguments` subclass).

Field names are the ones users already know from TrainingArguments / TRL / LLaMA-Factory. The `help` metadata is
what `sftforge train --help` prints; `choices` metadata is validated by the loader.

Nothing here imports transformers or torch (seconds), so help and config errors answer at once: the training keys
are checked against `TrainingSection` (a snapshot of TrainingArguments' fields plus sftforge's own), and the real
`SFTTrainingArguments` (config/training_args.py) is built only once the recipe is valid.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from sftforge.config.peft_args import PeftArguments
from sftforge.config.pref_args import PreferenceArguments
from sftforge.config.training_args_snapshot import TRANSFORMERS_VERSION, TrainingArgumentsSnapshot


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata=_help("Local model folder or Hugging Face hub id (hub ids need network).")
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata=_help("Tokenizer folder or hub id; defaults to model_name_or_path.")
    )
    model_revision: str = field(default="main", metadata=_help("Hub branch, tag or commit to load."))
    # --- guides (issue 14): keys the popular guides write
    low_cpu_mem_usage: bool = field(
        default=True,
        metadata=_help(
            "Accepted for older recipes; always on in transformers 5 (the model is built on the meta device and "
            "the weights load straight into it), so true and false load the same way."
        ),
    )
    torch_dtype: str = field(
        default="auto",
        metadata=_help(
            "Weights dtype: auto (the checkpoint's dtype on GPU, float32 on CPU), float32, bfloat16, float16.",
            choices=("auto", "float32", "bfloat16", "float16"),
        ),
    )
    attn_implementation: str = field(
        default="auto",
        metadata=_help(
            "Attention backend: auto (flash_attention_2 on a GPU with flash-attn installed, else sdpa), "
            "sdpa, eager, flash_attention_2.",
            choices=("auto", "sdpa", "eager", "flash_attention_2"),
        ),
    )
    trust_remote_code: bool = field(
        default=False, metadata=_help("Run Python code shipped with a hub model. Off unless you trust it.")
    )
    # --- training from scratch (pretraining): a config instead of weights ---
    config_name: str | None = field(
        default=None,
        metadata=_help(
            "Train from scratch: a config.json file, or a folder or hub id with one; the model is randomly initialised (seeded "
            "by `seed`) instead of loaded, sized to the tokenizer (tokenizer_name_or_path, else this folder). A "
            "model_name_or_path folder with a config.json but no weights is read as config_name."
        ),
    )
    config_overrides: str | None = field(
        default=None,
        metadata=_help(
            "With config_name: comma-separated key=value pairs that override its config, as in run_clm.py, e.g. "
            "'num_hidden_layers=4,hidden_size=256'."
        ),
    )
    # --- long context ---
    rope_scaling: dict[str, Any] | str | None = field(
        default=None,
        metadata=_help(
            "RoPE scaling applied to the model's config at load, to train beyond its max_position_embeddings, e.g. "
            "{rope_type: linear, factor: 2.0} or {rope_type: yarn, factor: 4.0} (transformers' rope_parameters; "
            "`type` is read as rope_type). Saved with the model, so inference uses it too."
        ),
    )
    # Mixture-of-experts models (config has num_experts / num_local_experts): the router's load-balancing loss.
    router_aux_loss_coef: float | None = field(
        default=None,
        metadata=_help(
            "MoE models: weight of the router's load-balancing (aux) loss added to the trained loss; default: the "
            "model's own (its config's: e.g. 0.001 Qwen1.5-MoE, 0.02 Mixtral-8x7B); 0 turns it off. Aliases: "
            "aux_loss_alpha, moe_aux_loss_coef."
        ),
    )
    output_router_logits: bool | None = field(
        default=None,
        metadata=_help(
            "MoE models: train with the router aux loss (default: on for MoE models); false turns it off. The "
            "saved config keeps the base's value, so generation is unaffected."
        ),
    )
    # --- migrating recipes (issue 16): LLaMA-Factory's name
    new_special_tokens: list[str] | None = field(
        default=None,
        metadata=_help(
            "Tokens to add to the tokenizer as special tokens (never split, skipped when decoding), e.g. "
            "'<tool_call>,</tool_call>' or a list; the embedding and LM head grow to match and the new rows are "
            "trained (LoRA: in full, saved with the adapter). Saved with the model's tokenizer."
        ),
    )


@dataclass
class DataArguments:
    train_data_path: list[str] | None = field(
        default=None,
        metadata=_help("Training data: a file (.json/.jsonl/.parquet/.csv), a directory, a glob, or a list."),
    )
    eval_data_path: list[str] | None = field(default=None, metadata=_help("Evaluation data, same forms."))
    dataset_name: str | None = field(
        default=None, metadata=_help("A `datasets` hub name or a folder saved with `save_to_disk`.")
    )
    dataset_config: str | None = field(default=None, metadata=_help("Config (subset) name of dataset_name."))
    dataset_train_split: str = field(default="train", metadata=_help("Split of dataset_name to train on."))
    dataset_test_split: str | None = field(
        default=None, metadata=_help("Split of dataset_name to evaluate on (optional).")
    )
    eval_split_ratio: float = field(
        default=0.0,
        metadata=_help(
            "Hold out this fraction of the training rows for evaluation when no eval set is given."
        ),
    )
    max_samples: int | None = field(default=None, metadata=_help("Use at most this many training rows."))
    dataset_num_proc: int | str | None = field(
        default="auto",
        metadata=_help(
            "Processes for preprocessing. auto: every usable core for large data (local files of 32 MB or more, "
            "or 50,000 rows), each worker reading and tokenizing its own share of the files; else this process "
            "plus a tokenizer thread (a new process takes seconds to start). A number: exactly that many."
        ),
    )
    max_length: int = field(
        default=1024, metadata=_help("Maximum tokens per example (longer ones are truncated).")
    )
    chat_template: str | None = field(
        default=None,
        metadata=_help(
            "Chat template: a .jinja file path, 'tokenizer' (the tokenizer's own; the default when it has one) "
            "or 'default' (ChatML, used when the tokenizer has none)."
        ),
    )
    train_on: str = field(
        default="all_assistant",
        metadata=_help(
            "Which tokens are trained: all_assistant (every assistant turn incl. its end-of-turn token), "
            "last_assistant (only the final assistant turn), all (inputs too).",
            choices=("all_assistant", "last_assistant", "all"),
        ),
    )
    train_on_reasoning: bool = field(
        default=True,
        metadata=_help("Train the <think> reasoning block of assistant turns (false: it is context only)."),
    )
    multi_turn: str = field(
        default="auto",
        metadata=_help(
            "Conversations with several trained assistant turns: auto (one example per row, unless the chat template "
            "renders earlier turns differently from how the model generates them — Qwen3 drops their reasoning, "
            "gpt-oss ends them with <|end|> — then that row becomes one example per trained turn, each rendered "
            "exactly as inference sees it), split (always one example per trained turn), whole (always one example "
            "per row, the whole conversation as rendered, as before this key existed; a turn it cannot place, or "
            "that ends with a token generation never stops on, refuses the row).",
            choices=("auto", "split", "whole"),
        ),
    )
    truncation: str = field(
        default="turns",
        metadata=_help(
            "Examples longer than max_length: turns (drop the earliest user/assistant rounds, keep system and "
            "tools), right (cut the end), drop (skip the example), error (stop).",
            choices=("turns", "right", "drop", "error"),
        ),
    )
    packing: bool = field(
        default=False,
        metadata=_help(
            "Pack whole examples into rows of max_length (best-fit decreasing) and train padding-free; samples never "
            "attend to each other (FlashAttention varlen on GPU, per-sample sdpa on CPU)."
        ),
    )
    streaming: bool = field(
        default=False,
        metadata=_help(
            "Read, tokenize (and pack) the training rows while training instead of before it, for corpora larger "
            "than memory or the disk cache; needs max_steps. Checkpoints record the exact stream position, so a "
            "resumed run continues with the next example. No tokenized cache; eval data is read as usual."
        ),
    )
    streaming_buffer: int = field(
        default=1000,
        metadata=_help(
            "With streaming: rows read as one window; the window's examples are packed together (packing) and "
            "shuffled within the window (train_sampling_strategy: random). Larger packs fuller, uses more memory."
        ),
    )
    on_bad_rows: str = field(
        default="error",
        metadata=_help(
            "A row that cannot be used: 'error' stops with file:line and the reason; 'skip' drops it and counts.",
            choices=("error", "skip"),
        ),
    )
    max_bad_row_fraction: float = field(
        default=0.1,
        metadata=_help(
            "With on_bad_rows: skip, stop when more than this fraction of the rows read is unusable (a wrong "
            "format or path usually makes most rows bad; 1.0 never stops)."
        ),
    )
    max_dropped_fraction: float = field(
        default=0.05,
        metadata=_help(
            "Stop when more than this fraction of the rows read is dropped for being longer than max_length "
            "(in any on_bad_rows mode; the error shows the rows' length percentiles and a max_length that keeps "
            "99% of them). Fewer drops train with a warning in the start-up summary; 1.0 never stops."
        ),
    )
    preprocessing_cache: bool = field(
        default=True,
        metadata=_help(
            "Reuse tokenized examples from an earlier run with the same data, tokenizer, chat template and data "
            "options (keyed by their content); false always tokenizes anew and stores nothing."
        ),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder of the tokenized-data cache; default: $SFTFORGE_CACHE, else ~/.cache/sftforge/tokenized."
        ),
    )
    # --- pretraining / continued pretraining (stage: pt) ---
    stage: str = field(
        default="sft",
        metadata=_help(
            "sft: conversations, trained as configured above. pt: pretraining on plain documents (text_column, "
            ".txt files): tokenized, eos appended to each, concatenated and cut into blocks of max_length "
            "(alias block_size) tokens, every token trained once per epoch; `pack: false` (alias of packing, which "
            "stage pt turns on) instead trains each document alone, cut at max_length. auto: pt when every "
            "training file is .txt or the first 100 rows hold text_column and no conversation, else sft. "
            "dpo: preference pairs (prompt, chosen, rejected) trained with TRL's DPOTrainer (pref_loss picks "
            "DPO, IPO, ORPO, SimPO, …); kto: unpaired (prompt, completion, label) rows with TRL's KTOTrainer.",
            choices=("sft", "pt", "auto", "dpo", "kto"),
        ),
    )
    text_column: str = field(
        default="text",
        metadata=_help("stage: pt: the column of .json/.jsonl/.parquet/.csv rows holding the document."),
    )
    txt_documents: str = field(
        default="line",
        metadata=_help(
            "stage: pt: how a .txt file splits into documents: line (one per non-empty line), blank_line "
            "(separated by blank lines), file (the whole file is one document).",
            choices=("line", "blank_line", "file"),
        ),
    )
    # --- other key names and several sources (issue 15)
    columns: dict[str, str] | None = field(
        default=None,
        metadata=_help(
            "Your rows' key names, e.g. {prompt: question, response: answer}. Names: LLaMA-Factory's "
            "dataset_info.json columns (prompt, query, response, system, history, messages, tools) or sftforge's "
            "format keys (instruction, input, output, conversations, prompt + completion, text) → your key."
        ),
    )
    tags: dict[str, str] | None = field(
        default=None,
        metadata=_help(
            "Your turns' key and role names, e.g. {role_tag: speaker, user_tag: user1}. As LLaMA-Factory names "
            "them: role_tag (from), content_tag (value), user_tag (human), assistant_tag (gpt), observation_tag, "
            "function_tag, system_tag (role and content work for role_tag and content_tag)."
        ),
    )
    datasets: list[dict | str] | None = field(
        default=None,
        metadata=_help(
            "Several training sources mixed into one (instead of train_data_path / dataset_name). Each: {path "
            "(file, folder, glob or list) or dataset_name (+ dataset_config, split), weight, max_samples | epochs "
            "| max_tokens, columns, tags, name}; a plain path stands for {path: PATH}."
        ),
    )
    mix_strategy: str = field(
        default="auto",
        metadata=_help(
            "How `datasets` combine: auto, concat, interleave_under, interleave_over. concat: each source as sized; "
            "interleave_under: shares by weight, as many as fit without repeating any source; interleave_over: "
            "shares by weight, every example at least once (smaller sources repeat); auto: concat without "
            "weights, interleave_under with them.",
            choices=("auto", "concat", "interleave_under", "interleave_over"),
        ),
    )
    interleave_probs: list[float] | str | None = field(
        default=None,
        metadata=_help(
            "Weights of the `datasets` sources, in order: a list or '0.7,0.3' (LLaMA-Factory's name; instead of "
            "each source's weight)."
        ),
    )
    mix_by: str = field(
        default="examples",
        metadata=_help(
            "What `datasets` weights share: examples or tokens. tokens: shares of trained tokens (a source of "
            "long answers then gives fewer examples).",
            choices=("examples", "tokens"),
        ),
    )
    drop_last_block: bool = field(
        default=False,
        metadata=_help(
            "stage: pt: drop the last block when it is shorter than max_length (run_clm.py does); false keeps "
            "it, so every token is trained."
        ),
    )
    document_isolation: bool = field(
        default=False,
        metadata=_help(
            "stage: pt: documents sharing a block do not attend to each other (position ids restart per "
            "document; the padding-free packed attention of `packing`). false: plain causal blocks, as run_clm.py."
        ),
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata=_help(
            "Hold out this percentage of the training rows (documents with stage: pt) for evaluation when no eval "
            "set is given, as run_clm.py; the same as eval_split_ratio × 100."
        ),
    )


@dataclass
class SFTTrainingKeys:
    """sftforge's training keys, and the TrainingArguments defaults it changes (they suit SFT better).

    Both `TrainingSection` (torch-free) and `SFTTrainingArguments` put these over TrainingArguments' fields.
    """

    output_dir: str | None = field(
        default="outputs/sft", metadata=_help("Where the model and logs are written.")
    )
    overwrite_output_dir: bool = field(
        default=False, metadata=_help("Allow writing into an output_dir that already holds a trained model.")
    )
    logging_steps: float = field(default=10, metadata=_help("Log every N optimizer steps."))
    # --- guides (issue 14): transformers 5 removed TrainingArguments.logging_dir
    logging_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder for TensorBoard event files (report_to: tensorboard); default OUTPUT_DIR/runs/DATE_HOST. "
            "transformers 5 dropped this argument and reads TENSORBOARD_LOGGING_DIR instead: sftforge sets it."
        ),
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata=_help(
            "Continue a run: 'auto' (or true) takes the newest complete checkpoint in output_dir (and starts fresh "
            "when there is none); a path takes that checkpoint, which must be complete."
        ),
    )
    ignore_resume_mismatch: bool = field(
        default=False,
        metadata=_help(
            "Resume even when the model, data, max_length, packing, seed or batch size differ from the "
            "checkpoint's run (the data order and position are then no longer the interrupted run's)."
        ),
    )
    nan_policy: str = field(
        default="stop",
        metadata=_help(
            "A NaN/Inf loss or gradient norm: 'stop' ends the run before the optimizer step (the last good "
            "checkpoint stays as it is); 'skip' skips that optimizer step and stops after max_skipped_steps in "
            "a row. With fp16 an Inf gradient is the loss scaler's business (it skips the step itself); under "
            "DeepSpeed only 'stop' works (its engine steps inside the backward pass).",
            choices=("stop", "skip"),
        ),
    )
    max_skipped_steps: int = field(
        default=3, metadata=_help("With nan_policy: skip, stop after this many non-finite steps in a row.")
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata=_help(
            "transformers' filter that replaces a NaN/Inf loss in the logs by the mean; off because nan_policy "
            "already stops or skips such steps, and the filter reads every micro-batch's loss from the GPU (a "
            "host sync per micro-batch)."
        ),
    )
    eval_generation: bool = field(
        default=False,
        metadata=_help(
            "At each evaluation, also answer the last trained turn of up to eval_generation_max_samples eval "
            "examples greedily and log eval_exact_match, eval_rouge_l, eval_bleu and length statistics (as "
            "`sftforge eval`). Needs eval data. Every process answers its share; the scores are gathered."
        ),
    )
    eval_generation_max_samples: int = field(
        default=100,
        metadata=_help("With eval_generation: answer at most this many eval examples (the first ones)."),
    )
    eval_max_new_tokens: int = field(
        default=128, metadata=_help("With eval_generation: the most tokens generated per answer.")
    )
    # --- migrating recipes (issue 16): LLaMA-Factory's name
    plot_loss: bool = field(
        default=True,
        metadata=_help(
            "Write OUTPUT_DIR/loss.png (training and evaluation loss against steps); false skips it."
        ),
    )
    # We tokenize ourselves and keep only model inputs, so the Trainer must not drop columns by signature.
    remove_unused_columns: bool = field(
        default=False, metadata=_help("Keep False: sftforge prepares the columns.")
    )


@dataclass
class LaunchArguments:
    """Multi-process launch through accelerate itself (`sftforge train` re-runs itself under `accelerate launch`).
    Not needed when you start sftforge with `accelerate launch`, `torchrun` or `deepspeed` yourself."""

    accelerate_config: str | None = field(
        default=None,
        metadata=_help(
            "Launch through `accelerate launch` with this config: ddp, zero2, zero3, zero3_offload, fsdp2 "
            "(shipped with sftforge, `sftforge configs` lists them) or a path to an accelerate config file."
        ),
    )
    num_processes: int | None = field(
        default=None, metadata=_help("Processes (GPUs) in all, across machines; default: the config's value.")
    )
    num_machines: int | None = field(default=None, metadata=_help("Machines (nodes) in a multi-node run."))
    machine_rank: int | None = field(default=None, metadata=_help("This machine's rank, 0 … num_machines-1."))
    main_process_ip: str | None = field(default=None, metadata=_help("Address of the rank-0 machine."))
    main_process_port: int | None = field(default=None, metadata=_help("Port on the rank-0 machine."))
    dry_run: bool = field(
        default=False,
        metadata=_help(
            "Check the run without training (usually on the command line: --dry_run): every config check, the "
            "launch command, tokenizer and chat template, the data read and tokenized (cached for the real run), "
            "the model built from its config without weights; prints the start-up summary and exits."
        ),
    )


@dataclass
class TrainingSection(SFTTrainingKeys, TrainingArgumentsSnapshot):
    """Every training key with its type, default and help, as SFTTrainingArguments has them, without torch."""


def training_schema(installed: str | None = None) -> type:
    """The class the training keys are read from: the snapshot when it was taken from the installed transformers,
    else the real SFTTrainingArguments (it imports torch: slower help and errors, the same answers)."""
    try:
        installed = installed or importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed == TRANSFORMERS_VERSION:
        return TrainingSection
    from sftforge.config.training_args import SFTTrainingArguments

    return SFTTrainingArguments


SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "peft": PeftArguments,
    "pref": PreferenceArguments,
    "training": training_schema(),
    "launch": LaunchArguments,
}


def __getattr__(name: str) -> Any:
    # SFTTrainingArguments lived here: old imports (and pickled training_args.bin files) still find it.
    if name == "SFTTrainingArguments":
        from sftforge.config.training_args import SFTTrainingArguments

        return SFTTrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

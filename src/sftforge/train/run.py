"""`sftforge train`: config → data → model → transformers.Trainer → Hugging Face folder + metrics + plot + card."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from transformers import set_seed

from sftforge.config import SFTConfig, dump_config
from sftforge.config.pref_args import PREFERENCE_STAGES
from sftforge.config.reporting import tensorboard_logdir
from sftforge.config.sources import check_run_sources
from sftforge.data.collate import FlatteningCollator, PaddingCollator
from sftforge.data.masking import MaskOptions
from sftforge.data.packing import pack_lengths
from sftforge.data.pipeline import PreparedData, TokenizeSpec, prepare_data
from sftforge.data.pretrain import coverage_metrics, prepare_pretrain_data, resolve_stage
from sftforge.data.train_sets import ExampleDataset, PackedDataset
from sftforge.errors import ConfigError
from sftforge.export.model_card import write_model_card
from sftforge.export.plot import plot_loss
from sftforge.export.save import restore_checkpoint_dtype, save_model_folder
from sftforge.model.context import check_context_length
from sftforge.model.load import TokenizerBundle, load_model, load_tokenizer
from sftforge.model.moe import configure_aux_loss, is_moe
from sftforge.model.peft import apply_finetuning, count_parameters
from sftforge.model.quant import quantization_config
from sftforge.model.varlen import VARLEN, check_packing_supported, packed_attention_backend
from sftforge.train.callbacks import ThroughputCallback
from sftforge.train.final_eval import final_eval_metrics
from sftforge.train.log_lines import library_bars_only_on_a_terminal, use_log_lines
from sftforge.train.preprocess_once import run_once_per_machine
from sftforge.train.resume import OFF, resolve_resume, run_identity
from sftforge.train.summary import print_final_summary, print_startup_summary
from sftforge.train.trainer import SFTTrainer


def check_output_dir(cfg: SFTConfig) -> Path:
    """Fail before any work when output_dir is unwritable or already holds a finished model."""
    out = refuse_finished_output_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".sftforge_write_test.{os.environ.get('RANK', '0')}"  # one per rank: no race
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to {str(out)!r} ({e.strerror}).", "output_dir") from None
    return out


def refuse_finished_output_dir(cfg: SFTConfig) -> Path:
    """The checks of output_dir that write nothing (a file there, or a finished model that would be lost)."""
    out = Path(cfg.training.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"output_dir: {str(out)!r} exists and is a file; choose a folder path.", "output_dir"
        )
    finished = (
        (out / "config.json").exists()
        or (out / "adapter_config.json").exists()
        or any(out.glob("checkpoint-*"))
    )
    resuming = str(cfg.training.resume_from_checkpoint or "").strip().lower() not in OFF
    if finished and not cfg.training.overwrite_output_dir and not resuming:
        raise ConfigError(
            f"output_dir: {str(out)!r} already holds a trained model or checkpoints. Continue the run with "
            "--resume_from_checkpoint auto (the newest complete checkpoint), use a new output_dir, or add "
            "--overwrite_output_dir true to start over (its checkpoints are deleted).",
            "output_dir",
        )
    return out


def tokenize_spec(cfg: SFTConfig, bundle: TokenizerBundle) -> TokenizeSpec:
    from sftforge.data.columns import compile_columns

    options = MaskOptions(train_on=cfg.data.train_on, train_on_reasoning=cfg.data.train_on_reasoning)
    return TokenizeSpec(
        bundle.tokenizer,
        bundle.template,
        cfg.data.max_length,
        options,
        cfg.data.truncation,
        cfg.data.multi_turn,
        columns=compile_columns(
            cfg.data.columns, cfg.data.tags, preference=cfg.data.stage in PREFERENCE_STAGES
        ),
        preference=cfg.data.stage if cfg.data.stage in PREFERENCE_STAGES else "",
    )


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prepare_tokenized_data(cfg: SFTConfig) -> tuple[TokenizerBundle, PreparedData]:
    """Tokenizer + the examples exactly as the trainer will see them (`sftforge inspect` shows the same)."""
    resolve_stage(cfg.data, cfg.explicit)  # stage: auto → pt or sft, from the data
    bundle = load_tokenizer(cfg.model, cfg.data)
    # Timed without the tokenizer load, like the peer's figure: the data stage only
    started = time.perf_counter()
    if cfg.data.streaming:  # training rows are read while training; only eval data now (train/streaming.py)
        from sftforge.train.streaming import prepare_streaming_data

        return bundle, prepare_streaming_data(cfg, tokenize_spec(cfg, bundle))
    if cfg.data.stage == "pt":  # documents → blocks (data/blocks.py); no chat template, no masks
        data = prepare_pretrain_data(cfg.data, bundle.tokenizer, cfg.training.seed)
    else:
        data = prepare_data(cfg.data, tokenize_spec(cfg, bundle), cfg.training.seed)
    data.seconds = time.perf_counter() - started
    return bundle, data


def build_trainer(
    cfg: SFTConfig, bundle: TokenizerBundle, data: PreparedData, model: Any, ref_model: Any = None
) -> SFTTrainer:
    if cfg.data.stage in PREFERENCE_STAGES:
        # TRL's DPOTrainer / KTOTrainer (ORPO, SimPO: its experimental ones) on sftforge's data (train/preference.py)
        from sftforge.train.preference import build_preference_trainer

        return build_preference_trainer(cfg, bundle, data, model, ref_model)
    train, evaluation = training_sets(data)
    packing_s, fill = 0.0, None
    pretraining = cfg.data.stage == "pt"
    if cfg.data.streaming:  # rows read, tokenized and packed while training (train/streaming.py)
        from sftforge.train.streaming import streaming_train_data

        spec, pad_id = tokenize_spec(cfg, bundle), bundle.tokenizer.pad_token_id
        train, collator = streaming_train_data(cfg, spec, pad_id, data, model)  # type: ignore[assignment]
    elif pretraining and cfg.data.packing and cfg.data.document_isolation:
        # Blocks carry their documents' lengths (seq_lens): the packed-SFT collator and attention isolate them
        backend = packed_attention_backend(cfg.model.attn_implementation)
        model.set_attn_implementation(backend)
        collator: Any = FlatteningCollator(bucket_layout=backend == VARLEN)
    elif pretraining:  # full blocks (only the last one may be shorter), or documents cut at max_length
        collator = PaddingCollator(bundle.tokenizer.pad_token_id, 8 if _on_gpu() else None)
    elif cfg.data.packing:
        started = time.perf_counter()
        # Rows of example indices over the token store: packing reads lengths only, never tokens
        train = PackedDataset(data.train, pack_lengths(data.train.lengths, cfg.data.max_length))
        packing_s, fill = time.perf_counter() - started, train.fill(cfg.data.max_length)
        backend = packed_attention_backend(cfg.model.attn_implementation)
        model.set_attn_implementation(backend)
        # The bucket layout is for sftforge_varlen; flash-attn needs only cu_seq_lens
        collator = FlatteningCollator(bucket_layout=backend == VARLEN)
    else:
        collator = PaddingCollator(bundle.tokenizer.pad_token_id, 8 if _on_gpu() else None)
    trainer = SFTTrainer(
        model=model,
        args=cfg.training,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        processing_class=bundle.tokenizer,
    )
    use_log_lines(trainer)  # one readable line per log step (train/log_lines.py)
    trainer.moe_model = is_moe(model.config)  # MoE: the router aux loss (model/moe.py)
    trainer.moe_aux, moe_note = configure_aux_loss(model, cfg.model, cfg.explicit)
    if moe_note and moe_note not in cfg.notes:
        cfg.notes.append(moe_note)
    trainer.stop_ids = bundle.end_of_turn_ids  # eval_generation: answers end where trained turns end
    trainer.packing_s, trainer.packing_fill = packing_s, fill  # reported with the preprocessing figures
    return trainer


def training_sets(data: PreparedData) -> tuple[Any, Any]:
    """The datasets the Trainer iterates, read from the token store on demand: examples (SFT) or blocks
    (pretraining)."""
    evaluation = ExampleDataset(data.eval, sources=False) if len(data.eval) else None
    return ExampleDataset(data.train), evaluation


def reference_plan(cfg: SFTConfig) -> tuple[str, str]:
    """How stage dpo / kto gets its reference — "none" (TRL needs no model of its own), "copy" or "load" — and
    the start-up line that says so (`--dry_run` too)."""
    pref = cfg.pref
    if pref.reference_free:
        return "none", f"reference: none ({pref.pref_loss} is reference-free)"
    if pref.ref_model:
        return "load", f"reference: {pref.ref_model}"
    if pref.precompute_ref_log_probs:  # scored by the model itself before its first step
        return (
            "none",
            "reference: the starting model's log-probs, computed once before training (cached with the data)",
        )
    if cfg.peft.is_adapter:
        # TRL switches the adapter off; sftforge's LoRA adapters start at zero, so that is the starting model
        return "none", "reference: the base model with the adapter switched off (no second copy)"
    if getattr(cfg.training, "deepspeed_plugin", None) is not None:
        # the policy's weights are sharded (ZeRO-3) or about to be: a copy would be shards without an engine
        return "load", "reference: the starting model, loaded again (DeepSpeed gives it an engine of its own)"
    return "copy", "reference: a frozen copy of the starting model"


def reference_model(cfg: SFTConfig, model: Any, bundle: TokenizerBundle) -> Any:
    """The reference model to hand TRL's trainer (None: it needs none of its own), as `reference_plan` says."""
    how, note = reference_plan(cfg)
    cfg.notes.append(note)
    if how == "none":
        return None
    if how == "copy":
        from sftforge.train.preference import frozen_reference

        return frozen_reference(model)
    from dataclasses import replace

    pref = cfg.pref
    ref_args = (
        replace(cfg.model, model_name_or_path=pref.ref_model, config_name=None)
        if pref.ref_model
        else cfg.model
    )
    set_seed(cfg.training.seed)  # a random init (config_name) draws the same weights as the policy's did
    ref = load_model(ref_args, False, quantization_config(cfg.peft), tokenizer=bundle.tokenizer)
    # Not frozen (requires_grad stays): under ZeRO-3, TRL's engine for a frozen reference fetched nothing (numel 0)
    # on the CPU run. TRL runs the reference under no_grad and never hands it to an optimizer either way.
    return ref.eval()


def check_before_data(cfg: SFTConfig) -> None:
    """What a run checks before it reads any data (`--dry_run` too): the model and data sources (a missing folder,
    a Hub id while offline), the stage, a model that packing would compute differently, and a max_length past
    the model's positions without RoPE scaling."""
    check_run_sources(cfg.model, cfg.data)
    if cfg.data.stage == "auto":  # → pt or sft, from the data
        resolve_stage(cfg.data, cfg.explicit)
        kind = "plain documents" if cfg.data.stage == "pt" else "conversations"
        cfg.notes.append(f"stage: auto → {cfg.data.stage} (the rows are {kind})")
    if uses_packed_attention(cfg):
        check_packing_supported(cfg.model)
    cfg.notes.extend(check_context_length(cfg.model, cfg.data.max_length))


def run_training(cfg: SFTConfig) -> dict[str, Any]:
    started = time.time()
    out = check_output_dir(cfg)
    library_bars_only_on_a_terminal()
    check_before_data(cfg)
    identity = run_identity(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    resume = resolve_resume(cfg, out, identity)
    # Several processes: the local main process tokenizes and fills the cache first, the others then read it,
    # waiting without a collective op (a long tokenization cannot hit the NCCL/gloo timeout).
    bundle, data = run_once_per_machine(lambda: prepare_tokenized_data(cfg))
    args = cfg.training
    ckpt = bool(args.activation_checkpointing)
    # Seed before anything random is initialised (LoRA matrices, resized embeddings): otherwise their values
    # depend on what consumed the RNG earlier (e.g. a cache hit or miss), and a rerun or a killed-then-resumed
    # run would not start from the same adapter as the original one.
    set_seed(args.seed)
    model = load_model(cfg.model, ckpt, quantization_config(cfg.peft), tokenizer=bundle.tokenizer)
    if cfg.model.config_name:
        cfg.notes.append(
            f"init: random weights from {cfg.model.config_name} (seed {args.seed}), "
            f"{count_parameters(model)[1]:,} parameters, vocabulary {model.config.vocab_size} (the tokenizer's)"
        )
    preference = cfg.data.stage in PREFERENCE_STAGES
    ref_model = reference_model(cfg, model, bundle) if preference else None  # before any adapter is added
    model, peft_notes = apply_finetuning(model, cfg.peft, bundle.tokenizer, ckpt)  # lora / qlora / freeze
    cfg.notes.extend(peft_notes)
    trainer = build_trainer(cfg, bundle, data, model, ref_model)
    trainer.run_identity = identity
    trainer.throughput = ThroughputCallback(trainer.tokens, model, int(os.environ.get("WORLD_SIZE", "1")))
    trainer.add_callback(trainer.throughput)
    if _is_main_process():
        dump_config(cfg, out / "sftforge_config.yaml")
        print_startup_summary(cfg, bundle, data, model, trainer.train_dataset)
    tokens = trainer.tokens
    before: dict[str, float] = {}
    # The eval pairs scored by the starting model (before train() shards it: not under DeepSpeed / FSDP)
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    if preference and cfg.data.stage == "dpo" and len(data.eval) and not resume and not sharded:
        from sftforge.train.preference import preference_eval

        before = preference_eval(trainer, trainer.eval_dataset, "_before")
    train_started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["global_step"] = trainer.state.global_step
    metrics["trainable_params"], metrics["total_params"] = count_parameters(model)
    # Read + convert + tokenize (or load from the cache) + pack; the tokenizer and model loads are not in it
    metrics["prep_s"] = round(data.seconds + trainer.packing_s, 3)
    metrics["train_s"] = round(time.time() - train_started, 3)
    metrics["seen_tokens"] = tokens.real_tokens  # real tokens trained on (pads excluded; this process)
    metrics["real_token_fraction"] = round(tokens.real_fraction, 4)
    metrics["tokens_per_s"] = round(tokens.real_tokens / max(metrics["train_s"], 1e-9), 1)
    if trainer.packing_fill is not None:  # real tokens / (packed rows × max_length)
        metrics["packing_fill"] = round(trainer.packing_fill, 4)
    if data.blocks is not None:  # stage pt: corpus_tokens, block_tokens, corpus_coverage, ...
        metrics.update(coverage_metrics(data.blocks))
    if cfg.model.config_name:
        metrics["init"] = "random"
    metrics["train_loss_first"] = next((e["loss"] for e in trainer.state.log_history if "loss" in e), None)
    metrics["train_loss_last"] = next(
        (e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None
    )
    if preference:  # rewards/accuracies, margins, chosen, rejected: first and last logged values
        from sftforge.train.preference import preference_metrics

        metrics.update(preference_metrics(trainer.state.log_history))
        if cfg.data.stage == "dpo" and len(data.eval):
            from sftforge.train.preference import preference_eval

            metrics.update(before)
            metrics.update(preference_eval(trainer, trainer.eval_dataset))
    if len(data.eval):
        # The saved weights' eval (with eval_perplexity, added in SFTTrainer.log), reused when the loop made it
        metrics.update(final_eval_metrics(trainer))
    metrics["trained_tokens_per_epoch"] = data.train_stats.trained_tokens
    metrics.update(row_metrics(data))
    metrics["wall_time_s"] = round(time.time() - started, 2)
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if uses_packed_attention(
        cfg
    ):  # back to a backend any loader knows (the saved config never records it anyway)
        model.set_attn_implementation(cfg.model.attn_implementation)
    restored = restore_checkpoint_dtype(trainer, cfg.model, "torch_dtype" in cfg.auto_resolved)
    if restored and trainer.is_world_process_zero():
        print(f"sftforge: {restored}", flush=True)
    save_model_folder(trainer, bundle.tokenizer, bundle.end_of_turn_ids, out)
    if trainer.is_world_process_zero():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (out / "log_history.json").write_text(
            json.dumps(trainer.state.log_history, indent=2), encoding="utf-8"
        )
        if args.plot_loss:
            plot_loss(trainer.state.log_history, out / "loss.png")
        write_model_card(
            out / "README.md",
            base_model=cfg.model.model_name_or_path or cfg.model.config_name,
            data_desc=_describe_data(cfg, data),
            training=args,
            extra={"max_length": cfg.data.max_length, "chat_template": bundle.template_source},
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None},
            dropped=metrics["rows_dropped"],
            adapter=cfg.peft if cfg.peft.is_adapter else None,
            intro=_pretraining_intro(cfg) or _preference_intro(cfg),
            preference=_preference_settings(cfg) if preference else None,
        )
        print_final_summary(metrics, out, tensorboard_logdir(args))
        if cfg.peft.merge_after_train:
            from sftforge.export.merge import merge_adapter

            merge_adapter(cfg.model.model_name_or_path, out, out / "merged", overwrite=True,
                          trust_remote_code=cfg.model.trust_remote_code)  # fmt: skip
    return metrics


def row_metrics(data: PreparedData) -> dict[str, Any]:
    """Rows read, kept and dropped by reason (length drops included) for metrics.json and the model card; the
    eval split's too when it was read from its own rows."""
    out: dict[str, Any] = {}
    for prefix, stats in (("", data.train_stats), ("eval_", data.eval_stats)):
        if stats is not None:
            out[f"{prefix}rows_read"] = stats.rows
            out[f"{prefix}rows_kept"] = stats.kept
            out[f"{prefix}rows_dropped"] = dict(stats.dropped.most_common())
    return out


def _pretraining_intro(cfg: SFTConfig) -> str | None:
    if cfg.data.stage != "pt":
        return None
    from sftforge import __version__

    if cfg.model.config_name:
        return (
            f"Pretrained from scratch (random init from `{cfg.model.config_name}`) with sftforge {__version__}: "
            "every token of the corpus trained."
        )
    return f"Continued pretraining of `{cfg.model.model_name_or_path}` with sftforge {__version__}: every token trained."


def _preference_intro(cfg: SFTConfig) -> str | None:
    if cfg.data.stage not in PREFERENCE_STAGES:
        return None
    from sftforge import __version__

    what = (
        "pairs of a chosen and a rejected answer"
        if cfg.data.stage == "dpo"
        else "answers rated desirable or not"
    )
    return (
        f"Preference training ({cfg.pref.loss(cfg.data.stage)}) of `{cfg.model.model_name_or_path}` on {what}, "
        f"made with sftforge {__version__} on TRL's {'KTO' if cfg.data.stage == 'kto' else 'DPO'}Trainer."
    )


def _preference_settings(cfg: SFTConfig) -> dict[str, Any]:
    pref = cfg.pref
    out: dict[str, Any] = {"stage": cfg.data.stage, "loss": pref.loss(cfg.data.stage), "beta": pref.pref_beta}
    if pref.pref_ftx:
        out["SFT weight (pref_ftx)"] = pref.pref_ftx
    out["reference"] = next((n.removeprefix("reference: ") for n in cfg.notes if n.startswith("reference: ")),
                            "none (reference-free loss)")  # fmt: skip
    return out


def uses_packed_attention(cfg: SFTConfig) -> bool:
    """Packed SFT rows, or pretraining blocks with isolated documents: the padding-free packed attention."""
    if cfg.data.stage == "pt":
        return bool(cfg.data.packing and cfg.data.document_isolation)
    return bool(cfg.data.packing)


def _describe_data(cfg: SFTConfig, data: PreparedData) -> str:
    source = cfg.data.train_data_path or [cfg.data.dataset_name]
    if cfg.data.datasets:  # a mix: its report names every source and its share
        source = [line.strip() for line in data.mix] or [str(d) for d in cfg.data.datasets]
    formats = ", ".join(f"{k}: {v}" for k, v in data.train_stats.formats.items())
    per, unit, trained = 1, "examples", "trained"
    if cfg.data.stage in PREFERENCE_STAGES:  # a pair is two stored examples; its answers are scored
        per, unit, trained = (
            (2, "pairs", "scored") if cfg.data.stage == "dpo" else (1, "rated answers", "scored")
        )
    return (
        f"Data: {', '.join(map(str, source))} — {data.train_stats.kept} usable rows ({formats}); "
        f"{len(data.train) // per} {unit} trained on; "
        f"{data.train_stats.trained_tokens} {trained} tokens of {data.train_stats.tokens}. "
        f"Eval: {len(data.eval) // per} {unit}."
    )


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()

"""`sftforge merge`: fold a LoRA / DoRA adapter into its base (peft `merge_and_unload`) and prove the result.

The proof, written to `merge_report.json` and printed:
1. parity — on a few real prompts rendered with the chat template, the merged model's logits equal base+adapter's
   (float32, max-abs difference ≤ 1e-4) and greedy generations are identical;
2. the saved folder — reloaded with `AutoModelForCausalLM` in the saved dtype, every tensor is bit-identical to
   the merged model; a float32 folder's logits must also meet the 1e-4 limit against base+adapter (a bf16/fp16
   folder's rounding is measured and reported).
A failed check exits 1 and leaves no weights behind. The base is always loaded unquantized (float32 for the
checks): merging into a 4-bit base would round the merged weights to 4 bits again (peer bug peft #2321).
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

from sftforge.errors import SftforgeError
from sftforge.export.merge_inputs import (
    attach_adapter,
    check_adapter,
    check_output,
    load_base,
    load_base_config,
    load_tokenizer,
    resolve_dtype,
    training_quantization,
)
from sftforge.export.parity import (
    DEFAULT_PROMPTS,
    TOLERANCE,
    differing_tensors,
    fingerprints,
    generation_config,
    max_abs,
    print_parity,
    print_saved,
    prompt_inputs,
    run_prompts,
)
from sftforge.model.peft import resize_embeddings_for

DTYPES = ("auto", "float32", "bfloat16", "float16")
_WEIGHT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "config.json")


class MergeVerificationError(SftforgeError):
    """The merged model does not reproduce base+adapter: nothing usable was written."""

    exit_code = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", required=True, help="the base model the adapter was trained on (folder or hub id)"
    )
    parser.add_argument(
        "--adapter", required=True, help="the adapter folder (output_dir of a LoRA or IA3 run)"
    )
    parser.add_argument("--output", required=True, help="folder for the merged model")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="dtype of the saved weights (auto: the base checkpoint's)",
    )
    parser.add_argument(
        "--max_shard_size", default="2GB", help="largest safetensors shard, e.g. 2GB or 500MB"
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a user message to check parity on (repeatable; default: 4 built-in prompts)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the checks run")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--trust_remote_code", action="store_true")


def run(args: argparse.Namespace) -> int:
    merge_adapter(
        args.base,
        args.adapter,
        args.output,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        prompts=args.prompt,
        device=args.device,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def merge_adapter(
    base: str,
    adapter: str | Path,
    output: str | Path,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    prompts: list[str] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Merge, verify, save; returns the report (also written to OUTPUT/merge_report.json)."""
    import torch

    adapter_dir, adapter_config = check_adapter(adapter)
    out = check_output(Path(output), adapter_dir, overwrite)
    base_config = load_base_config(base, trust_remote_code)
    target_dtype = resolve_dtype(dtype, base_config)
    tokenizer = load_tokenizer(adapter_dir, base, trust_remote_code)
    report: dict[str, Any] = {
        "base": str(base),
        "adapter": str(adapter_dir),
        "output": str(out),
        "dtype": str(target_dtype).removeprefix("torch."),
        "tolerance": TOLERANCE,
        "adapter_trained_on": adapter_config.get("base_model_name_or_path"),
        "quantization_bit_in_training": training_quantization(adapter_dir),
        "passed": False,
    }
    print(f"sftforge merge: {base} + {adapter_dir} → {out} ({report['dtype']})", flush=True)
    if report["quantization_bit_in_training"]:
        print(
            f" base         trained on a {report['quantization_bit_in_training']}-bit base; merging into the "
            "full-precision base, loaded unquantized (peft #2321)",
            flush=True,
        )

    model = load_base(base, trust_remote_code, device)
    resized = resize_embeddings_for(model, tokenizer)
    if resized:
        report["vocab_resized"] = list(resized)
    model = attach_adapter(model, adapter_dir, base)
    model.eval()
    inputs = prompt_inputs(tokenizer, prompts or list(DEFAULT_PROMPTS), device)
    gen_config = generation_config(adapter_dir, base, tokenizer)
    with torch.inference_mode():
        reference = run_prompts(model, inputs, gen_config)
    merged = _merge_and_unload(model)  # outside inference mode: the merged weights stay ordinary tensors
    del model
    with torch.inference_mode():
        after = run_prompts(merged, inputs, gen_config)
    report["prompts"] = len(inputs)
    report["positions_compared"] = sum(int(x["input_ids"].shape[1]) for x in inputs)
    report["merge_max_abs_logit_diff"] = max_abs(reference, after)
    report["merge_greedy_match"] = reference["tokens"] == after["tokens"]
    report["generations"] = [tokenizer.decode(t, skip_special_tokens=False) for t in after["tokens"]]
    merge_ok = report["merge_max_abs_logit_diff"] <= TOLERANCE and report["merge_greedy_match"]
    print_parity("parity", report["merge_max_abs_logit_diff"], report["merge_greedy_match"], len(inputs))
    if not merge_ok:
        _fail(out, report, "the merged model does not reproduce base+adapter")

    merged = merged.to(target_dtype)
    _save(merged, tokenizer, gen_config, out, max_shard_size)
    expected = fingerprints(merged)  # hashes, not copies: one model in memory at a time
    del merged
    gc.collect()
    reloaded = _reload(out, target_dtype, device)
    differing = differing_tensors(expected, fingerprints(reloaded))
    with torch.inference_mode():
        from_disk = run_prompts(reloaded, inputs, gen_config)
    del reloaded
    report["saved_tensors_identical"] = not differing
    if differing:
        report["saved_tensors_differing"] = differing[:20]
    # Logits of the folder as users load it, against base+adapter in float32. A half-precision folder differs by
    # its rounding: that figure is reported, and the files are held to exact equality above instead.
    key = "saved" if target_dtype == torch.float32 else "cast"
    report[f"{key}_max_abs_logit_diff"] = max_abs(reference, from_disk)
    report[f"{key}_greedy_match"] = reference["tokens"] == from_disk["tokens"]
    print_saved(report, key, len(inputs))
    if differing or (
        key == "saved"
        and (report["saved_max_abs_logit_diff"] > TOLERANCE or not report["saved_greedy_match"])
    ):
        _fail(
            out,
            report,
            "the saved folder, reloaded with AutoModelForCausalLM, does not reproduce the merged model",
        )
    report["passed"] = True
    _write_report(out, report)
    print(
        f" report       {out / 'merge_report.json'}\n merged model {out} (AutoModelForCausalLM)", flush=True
    )
    return report


def _merge_and_unload(peft_model: Any) -> Any:
    """peft's merge: W ← W + scale·B·A (DoRA: with its magnitude); the wrappers are removed."""
    return peft_model.merge_and_unload()


def _save(model: Any, tokenizer: Any, gen_config: Any, out: Path, max_shard_size: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _WEIGHT_GLOBS:  # --overwrite: no stale shards from an earlier, differently sharded merge
        for stale in out.glob(pattern):
            stale.unlink()
    model.config.use_cache = True
    model.generation_config = gen_config
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    tokenizer.save_pretrained(str(out))  # chat template included (chat_template.jinja)
    gen_config.save_pretrained(str(out))


def _reload(out: Path, dtype: Any, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype).to(device).eval()


def _write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


def _fail(out: Path, report: dict[str, Any], what: str) -> None:
    for pattern in _WEIGHT_GLOBS:  # never leave a loadable model that failed its check
        for path in out.glob(pattern):
            path.unlink()
    _write_report(out, report)
    saved = "saved_tensors_identical" in report
    diff = report.get("saved_max_abs_logit_diff" if saved else "merge_max_abs_logit_diff")
    figures = f"max |Δlogits| = {diff:.3g} (limit {TOLERANCE:g})" if diff is not None else "see the report"
    if saved and not report["saved_tensors_identical"]:
        figures += f", differing tensors: {', '.join(report['saved_tensors_differing'][:3])}"
    raise MergeVerificationError(
        f"{what}: {figures}. No merged weights were kept; details in {out / 'merge_report.json'}. "
        + (
            "Check that --base is the exact model the adapter was trained on."
            if not saved
            else "Please report this with the merge_report.json."
        )
    )

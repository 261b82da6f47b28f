"""`sftforge demo` (what `make demo` runs): the whole pipeline offline on 2 CPU cores in a few minutes.

Builds a tiny Qwen2 model with a tokenizer trained on the demo data, scores it on held-out prompts, fine-tunes it
with `recipes/demo.yaml` through the same code path as `sftforge train`, and scores it again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "examples" / "demo"
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"
DPO_RECIPE = REPO / "recipes" / "demo_dpo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="outputs/demo", help="where the base and trained models go")
    parser.add_argument(
        "--recipe", default=None, help="the training recipe (default: the stage's demo recipe)"
    )
    parser.add_argument("--data_dir", default=str(DEMO_DATA), help="folder with train.jsonl and test.jsonl")
    parser.add_argument(
        "--stage",
        choices=("sft", "dpo"),
        default="sft",
        help="sft: build the tiny model and fine-tune it; dpo: then preference-train the fine-tuned model on "
        "pairs.jsonl (answers with commas preferred), scoring before and after",
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def exact_match(
    model_dir: Path, rows: list[dict[str, Any]], batch_size: int = 50
) -> tuple[float, list[tuple]]:
    """Greedy answers to each row's prompt (all turns but the last); share of answers equal to the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"  # batched generation continues from the right edge
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [r["messages"][:-1] for r in chunk]
        enc = tok.apply_chat_template(
            prompts, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
        )
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        for row, seq in zip(chunk, out[:, enc["input_ids"].shape[1] :], strict=True):
            answer = tok.decode(seq, skip_special_tokens=True).strip()
            results.append((row["messages"][-2]["content"], row["messages"][-1]["content"], answer))
    score = sum(ref == got for _, ref, got in results) / max(1, len(results))
    return score, results


def _show(title: str, score: float, results: list[tuple], n: int = 4) -> None:
    print(f"\n{title}: exact match on {len(results)} held-out prompts = {100 * score:.1f}%")
    for prompt, ref, got in results[:n]:
        mark = "✓" if ref == got else "✗"
        print(f"  {mark} {prompt!r:42} → {got[:48]!r}  (expected {ref!r})")


def run(args: argparse.Namespace) -> int:
    if args.stage == "dpo":
        return run_dpo(args)
    args.recipe = args.recipe or str(DEMO_RECIPE)
    from sftforge.config import load_config
    from sftforge.testing import build_tiny_model
    from sftforge.train.run import run_training

    started = time.time()
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    data_dir = Path(args.data_dir)
    train_rows, test_rows = read_jsonl(data_dir / "train.jsonl"), read_jsonl(data_dir / "test.jsonl")
    corpus = [m["content"] for r in train_rows for m in r["messages"]]

    print("Step 1/4 — building a tiny Qwen2 model offline (tokenizer trained on the demo data)…")
    base = build_tiny_model(
        out / "base",
        arch="qwen2",
        texts=corpus,
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
        seed=0,
    )
    print("Step 2/4 — scoring the untrained model…")
    before, before_results = exact_match(base, test_rows)
    _show("Before fine-tuning", before, before_results)

    print("\nStep 3/4 — fine-tuning with", args.recipe)
    cfg = load_config(
        args.recipe,
        [
            "--model_name_or_path",
            str(base),
            "--train_data_path",
            str(data_dir / "train.jsonl"),
            "--output_dir",
            str(out / "model"),
        ],
    )
    metrics = run_training(cfg)

    print("Step 4/4 — scoring the fine-tuned model…")
    after, after_results = exact_match(out / "model", test_rows)
    _show("After fine-tuning", after, after_results)
    summary = {
        "exact_match_before": before,
        "exact_match_after": after,
        "eval_loss": metrics.get("eval_loss"),
        "train_loss_first": metrics.get("train_loss_first"),
        "train_loss_last": metrics.get("train_loss_last"),
        "wall_time_s": round(time.time() - started, 1),
    }
    (out / "demo_result.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(
        f"\nHeld-out exact match: {100 * before:.1f}% before → {100 * after:.1f}% after "
        f"(total {summary['wall_time_s']} s). Model: {out / 'model'}"
    )
    print(f"Try it: sftforge chat {out / 'model'}   (e.g. 'Reverse: cat moon river')")
    print(f"   or:  sftforge serve {out / 'model'}  (web chat page and OpenAI API at http://127.0.0.1:8000)")
    return 0


def comma_form(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The test rows with the answer the DPO pairs prefer: the same words, separated by commas."""
    out = []
    for row in rows:
        *prompt, answer = row["messages"]
        out.append({"messages": [*prompt, {**answer, "content": ", ".join(answer["content"].split())}]})
    return out


def run_dpo(args: argparse.Namespace) -> int:
    """SFT → DPO: preference-train the demo's fine-tuned model (made first when missing) on pairs that prefer
    comma-separated answers, and score held-out prompts in that form before and after."""
    from sftforge.config import load_config
    from sftforge.train.run import run_training

    started = time.time()
    out, data_dir = Path(args.output_dir), Path(args.data_dir)
    sft = out / "model"
    if not (sft / "config.json").is_file():
        print(f"No fine-tuned demo model at {sft}: running the SFT demo first.\n")
        run(argparse.Namespace(**{**vars(args), "stage": "sft", "recipe": None}))
    test_rows = comma_form(read_jsonl(data_dir / "test.jsonl"))
    print("\nStep 1/3 — scoring the fine-tuned model on the preferred (comma) form…")
    before, before_results = exact_match(sft, test_rows)
    _show("Before DPO", before, before_results)
    recipe = args.recipe or str(DPO_RECIPE)
    print("\nStep 2/3 — preference training (DPO) with", recipe)
    shutil.rmtree(out / "dpo", ignore_errors=True)
    cfg = load_config(recipe, ["--model_name_or_path", str(sft), "--train_data_path",
                               str(data_dir / "pairs.jsonl"), "--output_dir", str(out / "dpo")])  # fmt: skip
    metrics = run_training(cfg)
    print("Step 3/3 — scoring the preference-trained model…")
    after, after_results = exact_match(out / "dpo", test_rows)
    _show("After DPO", after, after_results)
    summary = {
        "preference_accuracy_before": metrics.get("eval_preference_accuracy_before"),
        "preference_accuracy_after": metrics.get("eval_preference_accuracy"),
        "reward_accuracy_after": metrics.get("eval_rewards/accuracies"),
        "comma_form_exact_match_before": before,
        "comma_form_exact_match_after": after,
        "wall_time_s": round(time.time() - started, 1),
    }
    (out / "demo_dpo_result.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(
        f"\nHeld-out pairs where the model prefers the chosen answer: {summary['preference_accuracy_before']:.0%} "
        f"before → {summary['preference_accuracy_after']:.0%} after; held-out answers in the preferred form: "
        f"{100 * before:.1f}% → {100 * after:.1f}% (total {summary['wall_time_s']} s). Model: {out / 'dpo'}"
    )
    print(f"Try it: sftforge chat {out / 'dpo'}   (e.g. 'Reverse: cat moon river')")
    return 0

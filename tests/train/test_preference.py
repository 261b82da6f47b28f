"""Preference training (stage dpo / kto) on TRL's trainers: the loss at the start, learning a preference, the
reference model of a LoRA run, precomputed reference log-probs, KTO, and what a run reports."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import set_seed

from sftforge.config import load_config
from sftforge.model.load import load_model
from sftforge.model.peft import apply_finetuning
from sftforge.model.quant import quantization_config
from sftforge.train.run import check_before_data, prepare_tokenized_data, reference_model

WORDS = ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake", "sea", "sky", "road", "wind"]


def learnable_pairs(n: int, seed: int = 0) -> list[dict]:
    """Is the word in the prompt one of the first six? The chosen answer says so ("W yes" / "W no", two tokens
    each in the tiny model's vocabulary), the rejected one says the opposite: answers of the same shape and
    length, right half of the time whichever word the starting model leans to, and a rule to learn that carries
    to held-out pairs (their words are the same twelve)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w = rng.choice(WORDS)
        right, wrong = ("yes", "no") if WORDS.index(w) < 6 else ("no", "yes")
        rows.append(
            {"prompt": f"Is {w} on the list? ({i})", "chosen": f"{w} {right}", "rejected": f"{w} {wrong}"}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def make_trainer(model_dir: Path, data: Path, out: Path, *extra: str, stage: str = "dpo"):
    """The trainer `sftforge train` builds, in this process, in the same steps (train/run.py)."""
    from sftforge.train.preference import build_preference_trainer

    cfg = load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                             "--stage", stage, "--output_dir", str(out), "--report_to", "none",
                             "--per_device_train_batch_size", "4", "--seed", "0", *extra])  # fmt: skip
    check_before_data(cfg)
    bundle, prepared = prepare_tokenized_data(cfg)
    set_seed(0)
    model = load_model(cfg.model, False, quantization_config(cfg.peft), tokenizer=bundle.tokenizer)
    ref = reference_model(cfg, model, bundle)
    model, _ = apply_finetuning(model, cfg.peft, bundle.tokenizer, False)
    return build_preference_trainer(cfg, bundle, prepared, model, ref)


def first_batch(trainer, n: int = 4) -> dict:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    return trainer._prepare_inputs(batch)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", learnable_pairs(64))


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--finetuning_type", "lora"),
        ("--finetuning_type", "qlora"),
        ("--precompute_ref_log_probs", "true"),
    ],
    ids=["frozen_copy", "lora_adapter_off", "qlora_adapter_off", "precomputed"],
)
def test_step_0_loss_is_log_2_when_the_policy_is_the_reference(extra, tiny_model_dir, pairs, tmp_path):
    trainer = make_trainer(tiny_model_dir, pairs, tmp_path / "out", *extra)
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert abs(loss.item() - math.log(2)) < 1e-4, loss.item()
    if extra == ("--precompute_ref_log_probs", "true"):  # no reference model held while training
        assert trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_score_the_pairs_as_laid_out(loss, tiny_model_dir, pairs, tmp_path):
    """SimPO and ORPO run on TRL's CPOTrainer / ORPOTrainer over sftforge's pairs: their loss on a batch equals the
    formula computed here from each answer's log-prob (summed over exactly the answer's tokens)."""
    from sftforge.train.preference import pair_log_probs

    beta, gamma = 0.1, 0.5
    trainer = make_trainer(tiny_model_dir, pairs, tmp_path / "out", "--pref_loss", loss, "--pref_beta", str(beta),
                           "--simpo_gamma", str(gamma))  # fmt: skip
    assert getattr(trainer, "ref_model", None) is None  # reference-free: no second model
    first = trainer.train_dataset.select(range(4))
    chosen, rejected = pair_log_probs(trainer, first)
    n_c = torch.tensor([len(x) for x in first["chosen_ids"]], dtype=torch.float32)
    n_r = torch.tensor([len(x) for x in first["rejected_ids"]], dtype=torch.float32)
    avg_c, avg_r = chosen / n_c, rejected / n_r
    if loss == "simpo":  # -log σ(β (avg_c − avg_r) − γ), no SFT term (pref_ftx 0)
        expected = -torch.nn.functional.logsigmoid(beta * (avg_c - avg_r) - gamma).mean()
    else:  # NLL of the chosen answers − β log σ(log odds ratio)
        log_odds = (avg_c - avg_r) - (torch.log1p(-avg_c.exp()) - torch.log1p(-avg_r.exp()))
        nll = -chosen.sum() / n_c.sum()
        expected = nll - beta * torch.nn.functional.logsigmoid(log_odds).mean()
    batch = trainer._prepare_inputs(trainer.data_collator([first[i] for i in range(4)]))
    loss_value = trainer.compute_loss(trainer.model, batch)
    assert loss_value.item() == pytest.approx(expected.item(), abs=1e-4)


def test_kto_starts_at_half_and_reads_the_rating(tiny_model_dir, tmp_path):
    """KTO with the policy as reference: every answer's reward and the KL estimate are 0, so the loss is
    1 − σ(0) = 0.5; the rating comes from the row's `label`."""
    rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in learnable_pairs(32) for side in ("chosen", "rejected")]  # fmt: skip
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    trainer = make_trainer(tiny_model_dir, data, tmp_path / "out", stage="kto")
    assert trainer.train_dataset[0]["label"] is True and trainer.train_dataset[1]["label"] is False
    assert "KL_completion_ids" in trainer.train_dataset.column_names
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert abs(loss.item() - 0.5) < 1e-4, loss.item()


def test_the_lora_reference_is_the_base_with_the_adapter_off(tiny_model_dir, pairs, tmp_path):
    """Same reference log-probs as a frozen copy of the base (1e-5), after the adapter moved away from zero, and
    no second copy of anything: no reference model, no "ref" adapter."""
    full = make_trainer(tiny_model_dir, pairs, tmp_path / "full")
    lora = make_trainer(tiny_model_dir, pairs, tmp_path / "lora", "--finetuning_type", "lora")
    assert lora.ref_model is None and list(lora.model.peft_config) == ["default"]
    torch.manual_seed(1)
    with torch.no_grad():  # as after some training: the adapter now changes the policy
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = first_batch(full)
    ref_c, ref_r = full.compute_ref_log_probs(full.ref_model, batch)
    off_c, off_r = lora.compute_ref_log_probs(lora.model, batch)
    assert torch.allclose(ref_c, off_c, atol=1e-5, rtol=0) and torch.allclose(ref_r, off_r, atol=1e-5, rtol=0)
    on = lora.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    base = full.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (on - base).abs().max() > 1e-2  # the adapter is on in the policy: the check above could fail


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               **(env_extra or {}))  # fmt: skip
    return subprocess.run([sys.executable, "-m", "sftforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_dpo_learns_a_preference_and_reports_it(tiny_model_dir, tmp_path):
    """Held-out pairs: the model's own preference starts near chance and ends ≥ 0.9, its reward accuracy is
    ≥ 0.9, the chosen answers' log-prob rises; metrics.json, the model card and the summary say so."""
    data = write_jsonl(tmp_path / "pairs.jsonl", learnable_pairs(96))
    out = tmp_path / "out"
    proc = run_cli("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                   "--stage", "dpo", "--output_dir", str(out), "--max_steps", "40", "--learning_rate", "1e-3",
                   "--per_device_train_batch_size", "8", "--eval_split_ratio", "0.25", "--logging_steps", "10",
                   "--save_strategy", "no", "--report_to", "none", "--seed", "0", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert 0.25 <= m["eval_preference_accuracy_before"] <= 0.75, m  # the tiny model has no taste yet
    assert m["eval_preference_accuracy"] >= 0.9 and m["eval_rewards/accuracies"] >= 0.9, m
    assert m["eval_chosen_logp"] > m["eval_chosen_logp_before"], m
    assert m["rewards/margins_last"] > m["rewards/margins_first"], m
    assert "eval_perplexity" not in m  # exp(a DPO loss) is no perplexity
    card = (out / "README.md").read_text()
    assert "Preference training" in card and "rewards/accuracies" in card
    assert " eval pairs   chosen preferred by the model in " in proc.stdout
    assert "eval_rewards/accuracies" in json.loads((out / "log_history.json").read_text())[-2]


@pytest.mark.slow
def test_precomputed_reference_log_probs_are_cached_with_the_data(tiny_model_dir, pairs, tmp_path):
    args = ("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(pairs), "--stage",
            "dpo", "--precompute_ref_log_probs", "true", "--max_steps", "2", "--save_strategy", "no",
            "--report_to", "none", "--per_device_train_batch_size", "4")  # fmt: skip
    cache = tmp_path / "cache"
    first = run_cli(
        *args, "--output_dir", str(tmp_path / "a"), cwd=tmp_path, env_extra={"SFTFORGE_CACHE": str(cache)}
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (stored,) = list(cache.rglob("cache-*.arrow"))  # TRL's file of the reference log-probs, beside the pairs
    stamp = stored.stat().st_mtime_ns
    second = run_cli(
        *args, "--output_dir", str(tmp_path / "b"), cwd=tmp_path, env_extra={"SFTFORGE_CACHE": str(cache)}
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p for p in cache.rglob("cache-*.arrow")] == [stored] and stored.stat().st_mtime_ns == stamp
    assert "Computing reference log probs" not in second.stderr


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_a_killed_dpo_run_resumes_to_the_uninterrupted_one(tiny_model_dir, pairs, tmp_path):
    """kill -9 right after step 5 (checkpoint-4 is the newest), resume: the steps after it log the same losses
    and rewards, and the weights end equal (1e-6)."""
    from sftforge_faults import fault_env

    common = ("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(pairs), "--stage",
              "dpo", "--max_steps", "8", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
              "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "4", "--report_to", "none",
              "--seed", "0", "--disable_tqdm", "true")  # fmt: skip
    straight = run_cli(*common, "--output_dir", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    env = fault_env(dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"), "kill_at_step=5")
    killed = subprocess.run([sys.executable, "-m", "sftforge", *common, "--output_dir", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()
    resumed = run_cli(*common, "--output_dir", str(out), "--resume_from_checkpoint", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def logged(folder: Path) -> dict[int, tuple[float, float]]:
        history = json.loads((folder / "log_history.json").read_text())
        return {e["step"]: (e["loss"], e["rewards/margins"]) for e in history if "loss" in e}

    a, b = logged(tmp_path / "straight"), logged(out)
    assert sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    wa, wb = _weights(tmp_path / "straight"), _weights(out)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


@pytest.mark.slow
def test_kto_trains_rated_answers_through_the_cli(tiny_model_dir, tmp_path):
    """stage kto end to end: desirable answers' rewards rise above the undesirable ones' on held-out rows too,
    and the run's summary, metrics and card say KTO."""
    rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in learnable_pairs(96) for side in ("chosen", "rejected")]  # fmt: skip
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    out = tmp_path / "out"
    proc = run_cli("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data), "--stage",
                   "kto", "--output_dir", str(out), "--max_steps", "30", "--logging_steps", "10",
                   "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--eval_split_ratio", "0.2",
                   "--save_strategy", "no", "--report_to", "none", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["rewards/margins_last"] > m["rewards/margins_first"] and m["eval_rewards/margins"] > 0, m
    assert (
        " split        154 train / 38 eval rated answers" in proc.stdout
        and " rewards      margin " in proc.stdout
    )
    assert "tags: [sftforge, kto]" in (out / "README.md").read_text()

"""`sftforge demo` (what `make demo` runs) must show real learning on held-out prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([sys.executable, "-m", "sftforge", "demo", "--output_dir", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=900)  # fmt: skip
    return out, proc


@pytest.mark.slow
def test_demo_learns_the_held_out_task(demo):
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "demo_result.json").read_text())
    assert result["exact_match_before"] <= 0.05  # an untrained model cannot do the task
    assert result["exact_match_after"] >= 0.9  # measured 1.0 on 2 CPU cores
    assert "Held-out exact match:" in proc.stdout
    assert (out / "model" / "loss.png").is_file()


@pytest.mark.slow
def test_dpo_demo_turns_the_models_preference_around(demo):
    """`make demo-dpo`: the SFT demo model, preference-trained on pairs preferring comma-separated answers."""
    out, sft = demo
    assert sft.returncode == 0, sft.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "sftforge", "demo", "--stage", "dpo", "--output_dir", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running the SFT demo first" not in proc.stdout  # it reuses the fine-tuned model
    result = json.loads((out / "demo_dpo_result.json").read_text())
    assert result["preference_accuracy_before"] <= 0.1  # the SFT model prefers its own plain answers
    assert result["preference_accuracy_after"] >= 0.9 and result["reward_accuracy_after"] >= 0.9
    assert result["comma_form_exact_match_before"] == 0.0
    assert result["comma_form_exact_match_after"] >= 0.8  # measured 0.98 on 2 CPU cores
    card = (out / "dpo" / "README.md").read_text()
    assert "tags: [sftforge, dpo]" in card and "reference a frozen copy of the starting model" in card
    assert "540 pairs trained on" in card and "Eval: 60 pairs." in card

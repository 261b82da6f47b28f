"""`make gpu-check` runs on GPUs only, but its script is tested here: on the CPU it runs what a CPU can (packed
attention and packed == unpacked loss, throughput logging) and names the reason for every check it skips."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", HERE / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def test_gpu_check_on_the_cpu_runs_what_it_can_and_says_why_it_skips_the_rest(tmp_path, capsys):
    gpu_check = _script()
    report = tmp_path / "report.md"
    assert gpu_check.main(["--cpu", "--report", str(report)]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in report.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| check") }  # fmt: skip
    assert set(rows) == set(gpu_check.CHECKS)
    for name in ("packing-sdpa", "packed==unpacked", "throughput"):
        assert rows[name][0] == "PASS", (name, rows[name])
    assert "max rel. per-sample loss diff" in rows["packing-sdpa"][1]
    for name in (
        "packing-flash",
        "bf16-full-ft",
        "fp16-guard",
        "qlora-merge",
        "liger",
        "zero3",
        "cuda-tests",
    ):
        assert rows[name][0] == "SKIP" and "needs a CUDA GPU" in rows[name][1], (name, rows[name])
    assert "3 passed, 0 failed, 7 skipped" in capsys.readouterr().out


def test_without_a_gpu_the_default_run_says_so_and_does_nothing(capsys, monkeypatch, tmp_path):
    gpu_check = _script()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--report", str(tmp_path / "r.md")]) == 0
    assert "no CUDA GPU visible" in capsys.readouterr().out and not (tmp_path / "r.md").exists()

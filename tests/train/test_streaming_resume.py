"""`streaming: true` through the real CLI: a run killed and resumed trains exactly the examples of the
uninterrupted run, step by step (none repeated, none skipped), and ends with the same losses and weights.

The examples each step trained are recorded from the outside (tests/faults `record_sources`), per micro-batch.
80 rows in windows of 8, packed, batch 2 × accumulation 2, 6 steps, a checkpoint every 2 steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sftforge_faults import fault_env

from sftforge.train.checkpoints import MARKER

pytestmark = pytest.mark.slow

WORDS = ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake", "sea", "sky"]
COMMON = ("--streaming", "true", "--streaming_buffer", "8", "--max_steps", "6", "--save_strategy", "steps",
          "--save_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
          "--learning_rate", "5e-3", "--logging_steps", "1", "--report_to", "none", "--seed", "0",
          "--max_length", "64", "--disable_tqdm", "true")  # fmt: skip
KILLED = -9


def run_train(model: Path, data: Path, out: Path, record: Path, *extra: str, fault: str = ""):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env = fault_env(env, ",".join(filter(None, [fault, f"record_sources={record}"])))
    cmd = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(model),
           "--train_data_path", str(data), "--output_dir", str(out), *COMMON, *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def trained(record: Path) -> dict[int, list[str]]:
    """step → the sources its micro-batches trained, in order."""
    steps: dict[int, list[str]] = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        steps.setdefault(entry["step"], []).extend(entry["sources"])
    return steps


def step_losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w} {i} times"},
                          {"role": "assistant", "content": " ".join([w] * (1 + i % 4))}]}
            for i, w in enumerate(WORDS * 8)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory) -> tuple[Path, dict[int, list[str]]]:
    folder = tmp_path_factory.mktemp("straight")
    ok(run_train(tiny_model_dir, data, folder / "out", folder / "sources.jsonl", "--packing", "true"))
    return folder / "out", trained(folder / "sources.jsonl")


@pytest.mark.parametrize("fault, resume_step", [("kill_at_step=3", 2), ("kill_in_accumulation=5", 4)])
def test_killed_and_resumed_streaming_run_trains_exactly_the_uninterrupted_examples(
    fault, resume_step, tiny_model_dir, data, straight, tmp_path
):
    straight_out, straight_steps = straight
    assert sorted(straight_steps) == [1, 2, 3, 4, 5, 6]
    every = [s for step in sorted(straight_steps) for s in straight_steps[step]]
    assert len(every) == len(set(every))  # 6 steps stay within one pass over the 80 rows: no repeats

    out, first, second = tmp_path / "out", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    killed = run_train(tiny_model_dir, data, out, first, "--packing", "true", fault=fault)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    state = json.loads((out / f"checkpoint-{resume_step}" / "stream_state_rank0.json").read_text())
    assert state["global_step"] == resume_step
    marker = json.loads((out / f"checkpoint-{resume_step}" / MARKER).read_text())
    assert "stream_state_rank0.json" in marker["files"]  # written before the commit, so checked on resume
    assert marker["position"]["stream"] == state["position"]

    resumed = ok(
        run_train(tiny_model_dir, data, out, second, "--packing", "true", "--resume_from_checkpoint", "auto")
    )
    assert f"resuming from {out / f'checkpoint-{resume_step}'}" in resumed.stdout
    before, after = trained(first), trained(second)
    assert min(after) == resume_step + 1  # the Trainer skipped nothing itself: the stream restarted there
    combined = {**{s: v for s, v in before.items() if s <= resume_step}, **after}
    assert combined == straight_steps  # the same examples at every step: none repeated, none skipped
    for step in (
        before.keys() & after.keys()
    ):  # a step (or its first micro-batches) trained again after the kill
        assert after[step][: len(before[step])] == before[step]

    a, b = step_losses(straight_out), step_losses(out)
    for step in range(resume_step + 1, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    wa, wb = load_file(straight_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert all(torch.isfinite(t).all() for t in wb.values())


def test_an_unpacked_streaming_run_goes_past_the_end_of_the_data(tiny_model_dir, data, tmp_path):
    """Without packing each batch holds 2 rows: 24 steps × 4 = 96 rows > 80, so the stream starts a second pass."""
    record = tmp_path / "sources.jsonl"
    out = (
        tmp_path / "out"
    )  # with eval rows (read whole) every 12 steps: their batches carry no stream position
    ok(
        run_train(
            tiny_model_dir,
            data,
            out,
            record,
            "--max_steps",
            "24",
            "--eval_data_path",
            str(data),
            "--eval_steps",
            "12",
        )
    )
    assert sum("eval_loss" in e for e in json.loads((out / "log_history.json").read_text())) >= 2
    every = [s for step, sources in sorted(trained(record).items()) for s in sources]
    assert len(every) == 96 and len(set(every[:80])) == 80  # the first pass: every row once
    assert set(every[80:]) <= set(every[:80])


def run_two(model: Path, data: Path, out: Path, record: Path, *extra: str, fault: str = ""):
    """2 processes on CPU (gloo) through accelerate with the shipped DDP config, batch 1 each."""
    import socket

    with socket.socket() as sock:  # a free port: fixed ones collide with runs still shutting down
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MASTER_ADDR="127.0.0.1")  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    env = fault_env(env, ",".join(filter(None, [fault, f"record_sources={record}"])))
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "configs/accelerate/ddp.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", port, "-m", "sftforge", "train",
           "--model_name_or_path", str(model), "--train_data_path", str(data), "--output_dir", str(out), *COMMON,
           "--per_device_train_batch_size", "1", "--packing", "true", *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500, cwd=repo)


def by_rank(record: Path) -> dict[tuple[int, int], list[str]]:
    """(rank, step) → the sources that rank trained in that step."""
    steps: dict[tuple[int, int], list[str]] = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        steps.setdefault((entry["rank"], entry["step"]), []).extend(entry["sources"])
    return steps


def test_two_processes_read_disjoint_shares_and_resume_each_exactly(tiny_model_dir, data, tmp_path):
    straight, killed, resumed = (
        tmp_path / "straight.jsonl",
        tmp_path / "killed.jsonl",
        tmp_path / "resumed.jsonl",
    )
    ok(run_two(tiny_model_dir, data, tmp_path / "a", straight))
    want = by_rank(straight)
    assert sorted(want) == [(r, s) for r in (0, 1) for s in range(1, 7)]
    rows = {r: {s for (rank, _), v in want.items() if rank == r for s in v} for r in (0, 1)}
    assert rows[0] and rows[1] and not rows[0] & rows[1]  # each rank its own rows
    line = lambda source: int(source.rsplit(":", 1)[1])  # noqa: E731 — file line = row index + 1
    assert all((line(s) - 1) % 2 == r for r, sources in rows.items() for s in sources)

    out = tmp_path / "b"
    assert run_two(tiny_model_dir, data, out, killed, fault="kill_at_step=3").returncode != 0
    assert {p.name for p in (out / "checkpoint-2").glob("stream_state_rank*.json")} == {
        "stream_state_rank0.json",
        "stream_state_rank1.json",
    }
    ok(run_two(tiny_model_dir, data, out, resumed, "--resume_from_checkpoint", "auto"))
    before, after = by_rank(killed), by_rank(resumed)
    assert min(step for _, step in after) == 3
    assert {**{k: v for k, v in before.items() if k[1] <= 2}, **after} == want
    a, b = step_losses(tmp_path / "a"), step_losses(out)
    assert all(b[s] == pytest.approx(a[s], abs=1e-5) for s in range(3, 7))


def test_inspect_of_a_streaming_recipe_shows_its_first_window(tiny_model_dir, data):
    import io

    from sftforge.inspect_data import run

    out = io.StringIO()
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data), "--streaming", "true",
            "--max_steps", "5", "--streaming_buffer", "4", "--color", "never"]  # fmt: skip
    assert run(argv, stdout=out) == 0
    text = out.getvalue()
    assert "streaming: the first 4 rows" in text and "4 rows read, 4 kept" in text


@pytest.mark.parametrize("packing", ["false", "true"])
def test_one_window_in_order_trains_the_same_numbers_as_without_streaming(
    packing, tiny_model_dir, data, tmp_path
):
    """A window holding every row, in order: the same batches as the non-streaming run with a sequential sampler
    (packed: the same best-fit-decreasing rows), so the same losses — the streaming DataLoader changes nothing."""
    extra = ("--train_sampling_strategy", "sequential", "--packing", packing, "--save_strategy", "no")
    ok(
        run_train(
            tiny_model_dir, data, tmp_path / "s", tmp_path / "s.jsonl", "--streaming_buffer", "100", *extra
        )
    )
    ok(run_train(tiny_model_dir, data, tmp_path / "n", tmp_path / "n.jsonl", "--streaming", "false", *extra))
    assert trained(tmp_path / "s.jsonl") == trained(tmp_path / "n.jsonl")
    a, b = step_losses(tmp_path / "s"), step_losses(tmp_path / "n")
    assert a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], abs=1e-6) for s in a)

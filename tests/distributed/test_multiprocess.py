"""Real 2-process training on CPU (gloo) through the real launchers: accelerate with the shipped configs (DDP,
DeepSpeed ZeRO-2, ZeRO-3), sftforge's own `--accelerate_config` launch, and a DeepSpeed JSON under torchrun and
under the `deepspeed` launcher.

Every run trains the same tiny model on the same rows for 6 optimizer steps with a global batch of 4; the
2-process runs (2 × 2) must match one process with a batch of 4: same per-step loss, same final weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sftforge_faults import fault_env

from sftforge.train.checkpoints import problems

pytestmark = pytest.mark.slow
pytest.importorskip(
    "deepspeed", reason="the `deepspeed` extra is not installed (pip install -e .[dev] has it)"
)

REPO = Path(__file__).resolve().parents[2]
WORDS = ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake"]
COMMON = ("--max_steps", "6", "--learning_rate", "5e-3", "--logging_steps", "1", "--report_to", "none",
          "--seed", "0", "--max_length", "64", "--disable_tqdm", "true", "--torch_dtype", "float32",
          "--bf16", "false", "--warmup_steps", "0")  # fmt: skip
# Loss and weights of 2 × batch 2 vs 1 × batch 4: the same sums in another order (fp32). Measured with DDP: losses
# equal to 1e-6, weights to 1.8e-5 after 6 AdamW steps at lr 5e-3 (Adam's m/sqrt(v) amplifies last-bit differences
# of near-zero gradients up to lr-sized steps); the bounds leave a little room above that.
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4


def env(fault: str | None = None, **extra: str) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
             MASTER_ADDR="127.0.0.1")  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(key, None)
    return fault_env({**e, **extra}, fault)


def run(
    cmd: list[str], timeout: int = 600, fault: str | None = None, **extra_env: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, env=env(fault, **extra_env), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert proc.returncode == 0, (" ".join(cmd), proc.stdout[-3000:], _without_noise(proc.stderr)[-6000:])
    return proc


def _without_noise(text: str) -> str:
    noise = ("Warning", "warnings.warn", "return func(", "super().__init__(loader)")
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in noise))


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model), "--train_data_path", str(data), "--output_dir", str(out),
            *COMMON, *extra]  # fmt: skip


def accelerate(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", _port(), "-m", "sftforge",
            *args]  # fmt: skip


def _port() -> str:
    """A port no one listens on now (fixed ports collide with runs still shutting down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


def assert_matches(out: Path, reference: Path) -> None:
    a, b = losses(reference), losses(out)
    assert sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=LOSS_TOL), (step, a[step], b[step])
    wa, wb = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    # A whole HF model folder (ZeRO-3 gathered it). DeepSpeed's gathered state dict also holds the tied LM head
    # as its own tensor: allowed, if it equals the embedding it is tied to.
    if "lm_head.weight" in wb and "lm_head.weight" not in wa:
        assert (wb.pop("lm_head.weight") == wb["model.embed_tokens.weight"]).all()
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= WEIGHT_TOL, diff
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # loadable as is


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w} {i} times"},
                          {"role": "assistant", "content": " ".join([w] * (1 + i % 3))}]}
            for i, w in enumerate(WORDS * 3)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run([sys.executable, "-m", "sftforge", *train_args(tiny_model_dir, data, out,
         "--per_device_train_batch_size", "4", "--save_strategy", "no")])  # fmt: skip
    return out


@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3"])
def test_two_processes_through_accelerate_match_one_process(config, tiny_model_dir, data, single, tmp_path):
    out = tmp_path / "out"
    run(accelerate(f"configs/accelerate/{config}.yaml", *train_args(tiny_model_dir, data, out,
        "--per_device_train_batch_size", "2", "--save_strategy", "no")))  # fmt: skip
    assert_matches(out, single)
    assert (out / "metrics.json").is_file() and (out / "README.md").is_file()  # written once, by rank 0


def test_sftforge_launches_itself_through_accelerate_and_resumes(tiny_model_dir, data, single, tmp_path):
    """`--accelerate_config zero3 --num_processes 2`, saving checkpoints; then a resume from checkpoint-3."""
    out = tmp_path / "out"
    base = [sys.executable, "-m", "sftforge", *train_args(tiny_model_dir, data, out, "--per_device_train_batch_size",
            "2", "--save_strategy", "steps", "--save_steps", "3", "--accelerate_config", "zero3",
            "--num_processes", "2", "--main_process_port", _port())]  # fmt: skip
    proc = run(base)
    assert "sftforge: launching" in proc.stdout and "accelerate.commands.launch" in proc.stdout
    assert_matches(out, single)
    assert problems(out / "checkpoint-3") == [] and problems(out / "checkpoint-6") == []
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-3", resumed / "checkpoint-3")
    base[base.index("--output_dir") + 1] = str(resumed)
    base[base.index("--main_process_port") + 1] = _port()
    proc = run([*base, "--resume_from_checkpoint", "auto"])
    assert f"resuming from {resumed / 'checkpoint-3'}" in proc.stdout
    assert_matches(resumed, single)


@pytest.mark.parametrize("launcher,stage", [("torchrun", "zero3"), ("deepspeed", "zero2")])
def test_deepspeed_json_through_torchrun_and_the_deepspeed_launcher(launcher, stage, tiny_model_dir, data, single,
                                                                   tmp_path):  # fmt: skip
    """`--deepspeed configs/deepspeed/NAME.json` under torchrun and under DeepSpeed's own launcher (on CPU it
    starts with its CPU accelerator and passes --local_rank=N before the command)."""
    out = tmp_path / "out"
    if launcher == "torchrun":
        start = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            _port(),
        ]
    else:
        start = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", _port()]
    run([*start, "-m" if launcher == "torchrun" else "--module", "sftforge",
         *train_args(tiny_model_dir, data, out, "--per_device_train_batch_size", "2", "--save_strategy", "no",
                     "--deepspeed", f"configs/deepspeed/{stage}.json")])  # fmt: skip
    assert_matches(out, single)
    assert (
        "deepspeed: configs/deepspeed" in (out / "sftforge_config.yaml").read_text()
    )  # the recipe as written


def test_the_other_ranks_wait_for_a_long_preprocessing_without_a_collective_timeout(
    tiny_model_dir, data, tmp_path
):
    """Rank 0 prepares the data for 12 s, past a 5 s process-group timeout: a barrier would fail (the stock
    main_process_first does); waiting on the rendezvous store does not."""
    out = tmp_path / "out"
    proc = run(accelerate("configs/accelerate/zero2.yaml", *train_args(tiny_model_dir, data, out,
               "--per_device_train_batch_size", "2", "--save_strategy", "no", "--max_steps", "2",
               "--ddp_timeout", "5")), fault="slow_preprocessing=12")  # fmt: skip
    assert "cache        miss" in proc.stdout  # rank 0 tokenized; rank 1 then loaded its cache entry
    assert len(losses(out)) == 2


@pytest.fixture(scope="module")
def single_lora(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single_lora") / "out"
    run([sys.executable, "-m", "sftforge", *train_args(tiny_model_dir, data, out,
         "--per_device_train_batch_size", "4", "--save_strategy", "no", *LORA)])  # fmt: skip
    return out


LORA = ("--finetuning_type", "lora", "--lora_r", "4", "--lora_dropout", "0")


def test_lora_under_zero3_saves_a_normal_adapter(tiny_model_dir, data, single_lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    run(accelerate("configs/accelerate/zero3.yaml", *train_args(tiny_model_dir, data, out,
        "--per_device_train_batch_size", "2", "--save_strategy", "no", *LORA)))  # fmt: skip
    a, b = losses(single_lora), losses(out)
    assert all(b[s] == pytest.approx(a[s], abs=LOSS_TOL) for s in a)
    wa = load_file(single_lora / "adapter_model.safetensors")
    wb = load_file(out / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(wb[k].numel() > 0 for k in wb)  # gathered, not ZeRO-3 shards
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= WEIGHT_TOL
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)


def test_loss_is_normalised_by_the_tokens_of_all_ranks():
    """The 2-process matches above rely on it: transformers divides by the trained tokens of every rank."""
    from sftforge.config import load_config

    cfg = load_config(None, ["--model_name_or_path", str(REPO), "--train_data_path", str(REPO / "README.md")])
    assert cfg.training.average_tokens_across_devices is True


def test_a_nan_loss_under_deepspeed_stops_before_the_engine_steps(tiny_model_dir, data, tmp_path):
    """DeepSpeed steps the optimizer inside the backward of the step's last micro-batch, so the guard must decide
    before that backward: with a NaN loss in step 3 the engine has taken exactly 2 steps when the run stops, and
    the message says the weights are step 2's (which is then true)."""
    cmd = accelerate("configs/accelerate/zero2.yaml", *train_args(tiny_model_dir, data, tmp_path / "out",
                     "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                     "--save_strategy", "no"))  # fmt: skip
    proc = subprocess.run(cmd, env=env("nan_loss_at_step=3,count_engine_steps=1"), capture_output=True,
                          text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "step 3 (rank 0): the loss is nan; training stopped before the optimizer step" in proc.stderr, (
        _without_noise(proc.stderr)[-4000:]
    )
    assert proc.stdout.count("sftforge-faults: engine steps: 2") == 2, proc.stdout[-3000:]  # both ranks


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": f"Is {w} on the list? ({i})", "chosen": f"{w} {'yes' if i % 2 else 'no'}",
             "rejected": f"{w} {'no' if i % 2 else 'yes'}"} for i, w in enumerate(WORDS * 3)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "extra", [(), ("--precompute_ref_log_probs", "true")], ids=["frozen_reference", "precomputed"]
)
def test_dpo_under_zero3_matches_one_process(extra, tiny_model_dir, pairs, tmp_path):
    """stage dpo on two ZeRO-3 processes (TRL wraps the reference in an engine of its own, or scores it once before
    training) trains what one process trains: the same losses step by step and the same weights."""
    dpo = ("--stage", "dpo", "--save_strategy", "no", *extra)
    single = tmp_path / "single"
    run([sys.executable, "-m", "sftforge", *train_args(tiny_model_dir, pairs, single, *dpo,
         "--per_device_train_batch_size", "4")])  # fmt: skip
    out = tmp_path / "zero3"
    run(accelerate("configs/accelerate/zero3.yaml", *train_args(tiny_model_dir, pairs, out, *dpo,
        "--per_device_train_batch_size", "2")))  # fmt: skip
    assert_matches(out, single)
    history = json.loads((out / "log_history.json").read_text())
    assert history[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # policy = reference at the first step
    assert "rewards/accuracies" in history[0]

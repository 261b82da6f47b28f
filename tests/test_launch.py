"""`--accelerate_config NAME --num_processes N`: the accelerate command line sftforge builds (not run here; the
real multi-process runs are in tests/distributed/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from sftforge.config.schema import LaunchArguments
from sftforge.errors import ConfigError
from sftforge.launch import (
    NAMED,
    check_launch_keys,
    launch_command,
    resolve_accelerate_config,
    strip_launch_overrides,
)
from sftforge.launch_configs import shipped_dir


@pytest.mark.parametrize("name", NAMED)
def test_every_shipped_name_resolves_and_its_deepspeed_json_exists(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./configs here: the package's own files
    path = resolve_accelerate_config(name)
    assert path == (shipped_dir() / "accelerate" / f"{name}.yaml").resolve()
    doc = yaml.safe_load(path.read_text())
    json_file = (doc.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if json_file:
        ds = json.loads((shipped_dir().parent / json_file).read_text())
        assert ds["zero_optimization"]["stage"] == (2 if name == "zero2" else 3)
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the recipe by the Trainer


def test_the_launch_command_passes_process_and_node_flags_and_drops_them_from_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the JSON path must not depend on the current folder
    launch = LaunchArguments("zero3", num_processes=16, num_machines=2, machine_rank=1,
                             main_process_ip="10.0.0.1", main_process_port=29500)  # fmt: skip
    argv = ["recipe.yaml", "--accelerate_config", "zero3", "--num_processes=16", "--learning_rate", "1e-5",
            "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
            "--main_process_port", "29500"]  # fmt: skip
    cmd = launch_command(launch, argv)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    config = Path(cmd[cmd.index("--config_file") + 1])
    ds_json = Path(yaml.safe_load(config.read_text())["deepspeed_config"]["deepspeed_config_file"])
    assert ds_json.is_absolute() and ds_json.is_file()
    flags = cmd[cmd.index("--config_file") + 2 : cmd.index("-m", 3)]
    assert flags == ["--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
                     "--main_process_ip", "10.0.0.1", "--main_process_port", "29500"]  # fmt: skip
    assert cmd[cmd.index("-m", 3) :] == ["-m", "sftforge", "train", "recipe.yaml", "--learning_rate", "1e-5"]


def test_a_path_works_and_an_unknown_name_lists_the_shipped_ones(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    assert resolve_accelerate_config(str(own)) == own.resolve()
    with pytest.raises(ConfigError, match="ddp, zero2, zero3, zero3_offload, fsdp2"):
        resolve_accelerate_config("zero4")


def test_strip_launch_overrides_keeps_everything_else():
    assert strip_launch_overrides(
        ["r.yaml", "--num_processes", "2", "--seed=3", "--accelerate_config=ddp"]
    ) == [
        "r.yaml",
        "--seed=3",
    ]


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_recipe_decides_mixed_precision_not_the_config_file(precision):
    cmd = launch_command(LaunchArguments("zero2"), ["r.yaml"], precision)
    assert cmd[cmd.index("--mixed_precision") + 1] == precision  # the shipped file says bf16


def test_fsdp_without_a_gpu_is_refused_before_any_process_starts(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="FSDP needs GPUs.*zero3"):
        launch_command(LaunchArguments("fsdp2"), ["r.yaml"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert "fsdp2.yaml" in " ".join(launch_command(LaunchArguments("fsdp2"), ["r.yaml"]))


def test_the_launch_removes_its_config_copy_when_the_run_ends(monkeypatch):
    seen = []

    def fake_call(cmd):
        config = Path(cmd[cmd.index("--config_file") + 1])
        seen.append(config)
        assert config.is_file()  # there while the processes run
        return 0

    monkeypatch.setattr("sftforge.launch.subprocess.call", fake_call)
    from sftforge.launch import launch

    assert launch(LaunchArguments("zero3"), ["r.yaml"], "no") == 0
    assert not seen[0].exists() and not seen[0].parent.exists()


def test_launch_keys_without_a_launch_config_are_refused():
    with pytest.raises(ConfigError, match="num_processes, num_machines set without accelerate_config"):
        check_launch_keys(LaunchArguments(num_processes=2, num_machines=1))


def test_a_multi_node_launch_needs_rank_address_and_the_total_process_count():
    with pytest.raises(ConfigError) as e:
        check_launch_keys(LaunchArguments("zero3", num_machines=2))
    assert [p.split(" ")[0] for p in e.value.problems] == [
        "machine_rank:",
        "main_process_ip:",
        "num_processes:",
    ]
    assert "e.g. 16 for 2 machines of 8 GPUs" in e.value.problems[2]
    with pytest.raises(
        ConfigError, match=r"machine_rank: 2 .* 0 on the main machine and 1 … 1 on the others"
    ):
        check_launch_keys(LaunchArguments("zero3", 16, num_machines=2, machine_rank=2, main_process_ip="h"))
    with pytest.raises(ConfigError, match="num_processes: 15 counts the processes of all machines together"):
        check_launch_keys(LaunchArguments("zero3", 15, num_machines=2, machine_rank=1, main_process_ip="h"))
    with pytest.raises(ConfigError, match="machine_rank: 1 needs num_machines"):
        check_launch_keys(LaunchArguments("zero3", 8, machine_rank=1))
    check_launch_keys(LaunchArguments("zero3", 16, num_machines=2, machine_rank=1, main_process_ip="h"))
    check_launch_keys(LaunchArguments("zero3", 8))

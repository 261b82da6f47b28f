"""`sftforge train RECIPE --dry_run`: the checks a run makes before its first step, the start-up summary, and
nothing else — no weights read, no training, no launch, nothing written to output_dir."""

from __future__ import annotations

import re
import shlex
import tempfile
from pathlib import Path

import pytest

from sftforge.cli import main
from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.launch import resolve_accelerate_config
from sftforge.train.dry_run import dry_run, without_dry_run


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    paths = {"model_name_or_path": model, "train_data_path": data, "output_dir": out}
    return [*(w for key, path in paths.items() for w in (f"--{key}", str(path))), *extra]


@pytest.mark.parametrize(
    "argv",
    [
        ["r.yaml", "--dry_run", "--seed", "1"],
        ["r.yaml", "--dry_run=true", "--seed", "1"],
        ["r.yaml", "--dry_run", "true", "--seed", "1"],
        ["r.yaml", "--seed", "1", "--dry_run"],
    ],
)
def test_without_dry_run_is_the_real_command_line(argv):
    assert without_dry_run(argv) == ["r.yaml", "--seed", "1"]


def test_the_summary_counts_the_parameters_of_the_real_model(tiny_model_dir, data_file, tmp_path, capsys):
    """The meta-device model, with LoRA applied, has the parameter counts the run's real model has."""
    from sftforge.model.load import load_model, load_tokenizer
    from sftforge.model.peft import apply_finetuning, count_parameters

    out = tmp_path / "out"
    cfg = load_config(
        None, args(tiny_model_dir, data_file, out, "--finetuning_type", "lora", "--lora_r", "4")
    )
    assert dry_run(cfg, []) == 0
    printed = capsys.readouterr().out
    real, _ = apply_finetuning(load_model(cfg.model, False), cfg.peft, load_tokenizer(cfg.model, cfg.data).tokenizer,
                               False)  # fmt: skip
    trainable, total = count_parameters(real)
    assert (
        f" model        {tiny_model_dir}  ({total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable)"
        in printed
    )
    assert " decision     fine-tuning: LoRA r=4" in printed
    assert " data         1 rows read, 1 kept" in printed
    assert printed.rstrip().endswith("sftforge train: dry run passed — run it without --dry_run to train.")
    assert not out.exists()  # nothing written to output_dir, not even the folder


def test_a_mistake_only_the_model_reveals_is_caught_without_weights(tiny_model_dir, data_file, tmp_path):
    """lora_target_modules that match nothing in the model: config checks cannot know, building the model does."""
    cfg = load_config(None, args(tiny_model_dir, data_file, tmp_path / "out", "--finetuning_type", "lora",
                                 "--lora_target_modules", "attn_out,ffn_in"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"lora_target_modules: .*Linear modules in this model: .*q_proj"):
        dry_run(cfg, [])


def test_a_finished_output_dir_and_an_unwritable_parent_are_refused(
    tiny_model_dir, data_file, tmp_path, monkeypatch
):
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a trained model"):
        dry_run(load_config(None, args(tiny_model_dir, data_file, done)), [])
    monkeypatch.setattr("sftforge.train.dry_run.os.access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(
        ConfigError, match=f"output_dir: cannot write to .*new/out.*{tmp_path} is not writable"
    ):
        dry_run(load_config(None, args(tiny_model_dir, data_file, tmp_path / "new" / "out")), [])


def test_through_the_cli_a_launch_is_shown_not_started(
    tiny_model_dir, data_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("sftforge.launch.subprocess.call", lambda cmd: pytest.fail(f"launched {cmd}"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the launch's config copy would go
    (tmp_path / "tmp").mkdir()
    argv = ["train", "--dry_run", *args(tiny_model_dir, data_file, tmp_path / "out"), "--accelerate_config",
            "zero2", "--num_processes", "4", "--per_device_train_batch_size", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    launch = re.search(r"^ launch       (.*)$", printed, re.M).group(1)
    assert (
        f"--config_file {resolve_accelerate_config('zero2')} --mixed_precision no --num_processes 4 "
        in launch
    )
    train_argv = [*args(tiny_model_dir, data_file, tmp_path / "out"), "--per_device_train_batch_size", "2"]
    assert launch.endswith(" " + shlex.join(["-m", "sftforge", "train", *train_argv]))  # no --dry_run
    assert " batch        2 per device × 1 accumulation = 8 effective" in printed  # 4 processes
    assert list((tmp_path / "tmp").iterdir()) == []  # the config copy with absolute paths is gone


def test_a_broken_recipe_exits_2_with_the_config_error(tiny_model_dir, tmp_path, capsys):
    assert (
        main(["train", "--dry_run", *args(tiny_model_dir, tmp_path / "missing.jsonl", tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert "train_data_path: " in err and "missing.jsonl' does not exist" in err

"""The CLI surface: user mistakes are one clear message with exit code 2 and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sftforge.cli import main


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--learnig_rate", "1e-4"], "unknown key 'learnig_rate'. Did you mean 'learning_rate'?"),
        (
            ["--per_device_train_batch_size", "eight"],
            "per_device_train_batch_size: expected an integer, got 'eight'",
        ),
        (["--bf16", "--fp16"], "bf16 and fp16 are both true"),
        (["--train_data_path", "missing.json"], "train_data_path: 'missing.json' does not exist"),
    ],
)
def test_config_errors_exit_2_with_one_message(capsys, data_file, extra, expected):
    argv = ["train", "--model_name_or_path", "m", "--train_data_path", str(data_file), *extra]
    if extra[0] == "--train_data_path":
        argv = ["train", "--model_name_or_path", "m", *extra]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert err.startswith("sftforge train: error: Problem in command line:")


def test_config_error_from_subprocess_has_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", "m", "--train_data_path",
         str(tmp_path / "nope.jsonl"), "--learnig_rate", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Did you mean 'learning_rate'?" in proc.stderr and "nope.jsonl' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_hub_model_fails_fast_with_a_hint_and_no_traceback(tmp_path, data_file):
    """A recipe naming a Hub model on a machine without it: exit 2 with what to do, before transformers' retries."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: fake-org/fake-model\ntrain_data_path: {data_file}\n"
                      f"output_dir: {tmp_path / 'out'}\n")  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run([sys.executable, "-m", "sftforge", "train", str(recipe)], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model_name_or_path: 'fake-org/fake-model' is not a local folder" in proc.stderr
    assert "`hf download fake-org/fake-model --local-dir DIR`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_llama_factory_recipe_mistakes_are_explained(capsys, tmp_path, data_file):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\nstage: dpo\nuse_unsloth: true\n"
                      "lora_rnak: 8\n")  # fmt: skip
    code, err = _run(capsys, "train", str(recipe))
    assert code == 2 and "Traceback" not in err
    assert "stage: LLaMA-Factory's stage: dpo is not supported" in err
    assert "use_unsloth: not an sftforge key: Unsloth's kernels are not used" in err
    assert "unknown key 'lora_rnak'. Did you mean 'lora_rank'?" in err


def test_bad_row_in_error_mode_names_file_and_line(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    data.write_text(f"{good}\n{good}\n{{not json\n")
    code, err = _run(capsys, "train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                     "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert f"{data}:3:" in err and "invalid_json" in err and "on_bad_rows: skip" in err
    assert "Traceback" not in err


def test_help_lists_keys_and_aliases(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in (
        "--model_name_or_path",
        "--train_data_path",
        "--max_length",
        "--learning_rate",
        "--on_bad_rows",
    ):
        assert key in out
    assert "max_seq_length → max_length" in out


def test_help_names_what_llama_factory_recipes_may_keep(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "dataset: a,b + dataset_dir (holds dataset_info.json" in out
    assert "template: tokenizer | default | chatml | qwen |" in out and "--plot_loss" in out
    assert "--new_special_tokens" in out and "also understood: train_on_prompt, mask_history" in out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "Did you mean 'train'?" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--local_rank=1", "--version"], ["--local_rank", "1", "--version"]])
def test_the_deepspeed_launchers_local_rank_argument_is_taken_out(argv, monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "")  # then removed: undone after the test, with main's own write
    monkeypatch.delenv("LOCAL_RANK")
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()  # the version: the command after --local_rank ran
    assert os.environ["LOCAL_RANK"] == "1"

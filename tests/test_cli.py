"""The CLI surface: user mistakes are one clear message with exit code 2 and no traceback."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import pytest

from sftforge.cli import COMMANDS, main


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
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\nstage: ppo\nuse_unsloth: true\n"
                      "lora_rnak: 8\n")  # fmt: skip
    code, err = _run(capsys, "train", str(recipe))
    assert code == 2 and "Traceback" not in err
    assert "stage: LLaMA-Factory's stage: ppo is not supported" in err
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


# ---------------------------------------------------------------- speed and help text (issue 16)

HEAVY = ("torch", "transformers")


def _sftforge_importtime(*argv: str, cwd=None) -> tuple[subprocess.CompletedProcess, float, set[str]]:
    """Run `python -m sftforge ARGV` as a user would; its wall time and the top-level packages it imported."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sftforge", *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd)  # fmt: skip
    wall = time.perf_counter() - start
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc, wall, imported


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "commands:"),
        (["train", "--help"], "--learning_rate"),
        (["train", "r.yaml"], "unknown key 'learning_rat'. Did you mean 'learning_rate'?"),
        (["train", "r.yaml", "--per_device_train_batch_size", "eight"], "expected an integer, got 'eight'"),
    ],
)
def test_help_and_config_errors_answer_without_torch(tmp_path, argv, expected):
    (tmp_path / "r.yaml").write_text("model_name_or_path: m\ntrain_data_path: d.jsonl\nlearning_rat: 1\n")
    runs = [_sftforge_importtime(*argv, cwd=tmp_path) for _ in range(2)]
    proc, _, imported = runs[0]
    assert expected in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not imported & set(HEAVY), f"{' '.join(argv)} imported {imported & set(HEAVY)}"
    # torch alone takes 4-5 s to import here; without it these answer in ~0.5 s (1.5 s: room for a busy machine)
    assert min(wall for _, wall, _ in runs) < 1.5


def test_no_command_help_imports_torch():
    probe = (
        "import contextlib, io, sys\n"
        "from sftforge.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        f"    print(name, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.splitlines()
    assert len(lines) == len(COMMANDS)
    assert all(line.endswith(" []") for line in lines), (
        lines
    )  # the first command that imported torch shows it


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_every_command_help_shows_its_positionals_and_defaults(command, monkeypatch, capsys):
    parsers: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_known_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    usage = text.split("\n\n")[0]
    assert usage.startswith(f"usage: sftforge {command}")
    assert all(len(line) <= 100 for line in text.splitlines()), [x for x in text.splitlines() if len(x) > 100]
    (parser,) = parsers
    for action in parser._actions:
        if not action.option_strings:
            assert (action.metavar or action.dest) in usage, (
                f"{command}: positional {action.dest} not in usage"
            )
        shown = (
            action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        )
        if shown and action.option_strings:
            block = _help_block(text, action.option_strings[-1])
            assert "default" in block, f"{command} {action.option_strings[-1]}: no default in {block!r}"
    if command == "inspect":  # its recipe is read outside argparse (it would swallow an override's value)
        assert "[RECIPE.yaml]" in usage and "  RECIPE.yaml " in text


def _help_block(text: str, option: str) -> str:
    """The help lines of `option`: from its line to the next option's."""
    lines = text.splitlines()

    def names(line: str) -> list[str]:  # "  -h, --help  show …" → ["-h", "--help"]
        return [w for w in re.split(r"[ ,]+", line.strip())[:3] if w.startswith("-")]

    start = next(i for i, line in enumerate(lines) if option in names(line))
    end = next((i for i in range(start + 1, len(lines)) if names(lines[i])), len(lines))
    return " ".join(line.strip() for line in lines[start:end])


def test_command_list_wraps_at_word_boundaries(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    merge = next(i for i, line in enumerate(lines) if line.startswith("  merge "))
    assert lines[merge + 1].startswith(" " * 19) and lines[merge + 1].strip()  # its description continues

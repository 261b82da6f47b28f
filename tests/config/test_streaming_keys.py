"""`streaming: true` in the config: what it needs (max_steps), what it refuses, and what it sets for the Trainer."""

from __future__ import annotations

import pytest

from sftforge.config import load_config
from sftforge.errors import ConfigError


def args(data_file, *extra: str) -> list[str]:
    return ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--streaming", "true", *extra]


def test_streaming_defaults_and_what_it_sets(data_file):
    cfg = load_config(None, args(data_file, "--max_steps", "10"))
    assert cfg.data.streaming and cfg.data.streaming_buffer == 1000
    assert (
        cfg.training.ignore_data_skip
    )  # the stream restarts from its own position; the Trainer skips nothing
    assert not load_config(
        None, ["--model_name_or_path", "m", "--train_data_path", str(data_file)]
    ).data.streaming


def test_streaming_needs_max_steps_naming_the_key_and_the_fix(data_file):
    with pytest.raises(ConfigError) as info:
        load_config(None, args(data_file))
    assert "max_steps: streaming" in str(info.value) and "--max_steps" in str(info.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--eval_split_ratio", "0.1"), "eval_split_ratio: a held-out split needs the whole training set"),
        (("--group_by_length", "true"), "train_sampling_strategy: group_by_length"),
        (("--dataloader_num_workers", "2"), "dataloader_num_workers: streaming"),
        (("--streaming_buffer", "0"), "streaming_buffer: must be at least 1"),
        (("--eval_data_path", "EVAL", "--eval_strategy", "epoch"), "eval_strategy: epoch never comes"),
    ],
)
def test_streaming_refuses_what_needs_the_whole_set(data_file, extra, message):
    extra = tuple(str(data_file) if e == "EVAL" else e for e in extra)
    with pytest.raises(ConfigError, match=message):
        load_config(None, args(data_file, "--max_steps", "10", *extra))


def test_eval_data_with_streaming_evaluates_every_eval_steps(data_file):
    cfg = load_config(None, args(data_file, "--max_steps", "10", "--eval_data_path", str(data_file)))
    assert cfg.training.eval_strategy == "steps"  # an epoch never ends in a stream
    assert any("streaming has no epochs" in note for note in cfg.notes)

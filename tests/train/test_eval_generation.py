"""eval_generation during training: rank shards and the config checks (the training run itself is in
tests/eval/test_command.py)."""

from __future__ import annotations

import pytest

from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.train.eval_generation import shard


def test_shards_cover_everything_once_with_equal_lengths():
    for n, world in [(10, 3), (2, 4), (7, 1), (1, 2)]:
        shards = [shard(n, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1  # same number of generate batches on every rank
        assert set().union(*map(set, shards)) == set(range(n))


def test_eval_generation_needs_eval_data(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    base = ["--model_name_or_path", "m", "--train_data_path", str(data), "--eval_generation", "true"]
    with pytest.raises(ConfigError, match="eval_generation: true needs evaluation data"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="eval_max_new_tokens: must be at least 1"):
        load_config(None, [*base, "--eval_split_ratio", "0.5", "--eval_max_new_tokens", "0"])
    cfg = load_config(None, [*base, "--eval_split_ratio", "0.5"])
    assert cfg.training.eval_generation and cfg.training.eval_generation_max_samples == 100

"""`rope_scaling` in the recipe: a mapping with a known rope_type and its factor, or one clear problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftforge.config import load_config
from sftforge.config.validate_rope import check_rope_scaling
from sftforge.errors import ConfigError


def problems_for(scaling: object) -> list[str]:
    problems: list[str] = []
    check_rope_scaling({"rope_scaling": scaling}, problems)
    return problems


@pytest.mark.parametrize(
    "scaling",
    [
        None,
        {"rope_type": "linear", "factor": 2.0},
        {"type": "dynamic", "factor": 4},
        {"rope_type": "yarn", "factor": 1},
    ],
)
def test_usable_mappings_pass(scaling: object) -> None:
    assert problems_for(scaling) == []


@pytest.mark.parametrize(
    "scaling, expected",
    [
        ("linear", "rope_scaling: 'linear' names only the kind; write the mapping with its factor"),
        ({"rope_type": "stretchy", "factor": 2}, "rope_scaling: rope_type 'stretchy' is not one of linear,"),
        ({"factor": 2}, "rope_scaling: rope_type None is not one of"),
        ({"rope_type": "yarn"}, "rope_scaling: yarn needs a factor of at least 1"),
        ({"rope_type": "linear", "factor": 0.5}, "rope_scaling: linear needs a factor of at least 1"),
    ],
)
def test_each_mistake_is_one_problem_with_an_example(scaling: object, expected: str) -> None:
    problems = problems_for(scaling)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    assert "{rope_type: linear, factor: 2.0}" in problems[0]


def test_the_recipe_key_reaches_the_model_arguments(tmp_path: Path, data_file: Path) -> None:
    argv = ["--model_name_or_path", str(tmp_path), "--train_data_path", str(data_file)]
    cfg = load_config(None, [*argv, "--rope_scaling", '{"rope_type": "linear", "factor": 2.0}'])
    assert cfg.model.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ConfigError, match="rope_scaling: 'yarn' names only the kind"):
        load_config(None, [*argv, "--rope_scaling", "yarn"])

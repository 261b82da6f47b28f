"""`deepspeed: zero3`: a shipped DeepSpeed JSON by name, so torchrun / deepspeed launches work from a wheel install
too (no configs/ folder needed); the written config keeps the name."""

from __future__ import annotations

import pytest

from sftforge.config.validate import check_and_resolve
from sftforge.launch_configs import shipped_dir


def resolve(deepspeed: str, tmp_path) -> tuple[dict, list[str], list[str], dict]:
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path)}, "data": {"train_data_path": [str(data)]},
              "training": {"deepspeed": deepspeed}, "peft": {}, "launch": {}}  # fmt: skip
    problems: list[str] = []
    auto: dict = {}
    notes = check_and_resolve(values, {"model_name_or_path", "train_data_path", "deepspeed"}, problems, auto)
    return values["training"], problems, notes, auto


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_a_shipped_name_becomes_its_json_and_the_written_config_keeps_the_name(name, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    training, problems, notes, auto = resolve(name, tmp_path)
    path = shipped_dir() / "deepspeed" / f"{name}.json"
    assert problems == []
    assert training["deepspeed"] == str(path) and auto["deepspeed"] == name
    assert f"deepspeed: {name} → {path} (shipped)" in notes


def test_a_file_of_that_name_here_wins_and_an_unknown_name_is_left_to_the_usual_checks(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zero2").write_text("{}")
    training, _, notes, auto = resolve("zero2", tmp_path)
    assert (
        training["deepspeed"] == "zero2"
        and "deepspeed" not in auto
        and not any("shipped" in n for n in notes)
    )
    training, problems, _, _ = resolve("zero9.json", tmp_path)
    assert problems[0].startswith("deepspeed: 'zero9.json' does not exist")
    assert "the shipped ones go by name: zero2, zero3, zero3_offload" in problems[0]

"""`sftforge configs`: the shipped launch configs listed with their files, and `configs copy` for editing."""

from __future__ import annotations

import pytest

from sftforge.cli import main
from sftforge.launch_configs import NAMED, PURPOSES, shipped_dir


def test_the_list_names_each_config_its_purpose_and_files(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in NAMED:
        assert f"  {name:<14} {PURPOSES[name]}" in out
        assert str(shipped_dir() / "accelerate" / f"{name}.yaml") in out
    assert f"{shipped_dir() / 'deepspeed' / 'zero3_offload.json'}  (also: --deepspeed zero3_offload)" in out
    assert "(your copy)" not in out


def test_copy_then_the_list_shows_the_copy_and_a_second_copy_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "copy", "zero2"]) == 0
    out = capsys.readouterr().out
    assert "wrote configs/accelerate/zero2.yaml\nwrote configs/deepspeed/zero2.json\n" in out
    assert "`--accelerate_config zero2` now uses your copy" in out
    assert main(["configs", "list"]) == 0
    assert f"{(tmp_path / 'configs/accelerate/zero2.yaml').resolve()}  (your copy)" in capsys.readouterr().out
    assert main(["configs", "copy", "zero2"]) == 2
    assert "already exist; edit it, or pass --force" in capsys.readouterr().err


def test_an_unknown_name_lists_the_shipped_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(["configs", "copy", "zero4"])
    assert e.value.code == 2
    assert "invalid choice: 'zero4'" in capsys.readouterr().err

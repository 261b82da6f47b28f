"""The shipped launch configs are package data: one folder (src/sftforge/configs) that a wheel carries, that the
repository's configs/ links to, and that `--accelerate_config NAME` finds wherever sftforge is installed."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import sftforge
from sftforge.config.schema import LaunchArguments
from sftforge.errors import ConfigError
from sftforge.launch import launch_command, resolve_accelerate_config
from sftforge.launch_configs import NAMED, copy_config, shipped, shipped_deepspeed_json, shipped_dir

REPO = Path(__file__).resolve().parents[1]


def test_the_configs_live_in_the_package_and_the_repository_links_to_them():
    assert shipped_dir() == Path(sftforge.__file__).parent / "configs"
    assert (REPO / "configs").is_symlink() and (REPO / "configs").resolve() == shipped_dir().resolve()
    for name in NAMED:
        config = shipped(name)
        assert config.accelerate.is_file() and config.purpose
        deepspeed = yaml.safe_load(config.accelerate.read_text())["distributed_type"] == "DEEPSPEED"
        assert (config.deepspeed is not None) == deepspeed
        if deepspeed:
            assert config.deepspeed.is_file() and config.deepspeed.parent == shipped_dir() / "deepspeed"


def test_package_data_globs_cover_every_shipped_file():
    """A file the globs miss would be in a checkout but not in a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the wheel test checks the same files on 3.10
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["sftforge"]
    files = [p.relative_to(shipped_dir().parent).as_posix() for p in shipped_dir().rglob("*") if p.is_file()]
    assert len(files) == 8  # 5 accelerate YAMLs, 3 DeepSpeed JSONs
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_deepspeed_jsons_go_by_name():
    assert shipped_deepspeed_json("zero2") == shipped_dir() / "deepspeed" / "zero2.json"
    assert shipped_deepspeed_json("ddp") is None  # no DeepSpeed in plain DDP


def test_a_copy_takes_the_shipped_layout_and_then_wins_over_the_shipped_file(tmp_path, monkeypatch):
    written = copy_config("zero3", tmp_path)
    assert written == [tmp_path / "configs/accelerate/zero3.yaml", tmp_path / "configs/deepspeed/zero3.json"]
    edited = json.loads(written[1].read_text())
    edited["zero_optimization"]["stage3_max_live_parameters"] = 12345
    written[1].write_text(json.dumps(edited))
    monkeypatch.chdir(tmp_path)
    assert resolve_accelerate_config("zero3") == written[0].resolve()
    cmd = launch_command(LaunchArguments("zero3"), ["r.yaml"], "no")
    launched = yaml.safe_load(Path(cmd[cmd.index("--config_file") + 1]).read_text())
    assert Path(launched["deepspeed_config"]["deepspeed_config_file"]) == written[1].resolve()
    with pytest.raises(ConfigError, match=r"zero3\.yaml, .*zero3\.json already exist; .*--force"):
        copy_config("zero3", tmp_path)
    assert copy_config("zero3", tmp_path, force=True) == written  # the shipped version again
    assert "12345" not in written[1].read_text()
    assert copy_config("ddp", tmp_path / "other") == [tmp_path / "other/configs/accelerate/ddp.yaml"]


@pytest.mark.slow
def test_a_wheel_carries_the_configs_and_an_install_from_it_finds_them(tmp_path):
    """Build the wheel from a copy of the sources (the worktree stays clean), install it into a bare folder,
    and resolve the names there, from a folder with no configs/: the files must come from the install."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("sftforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in NAMED:
        assert f"sftforge/configs/accelerate/{name}.yaml" in names
    assert {f"sftforge/configs/deepspeed/{n}.json" for n in ("zero2", "zero3", "zero3_offload")} <= names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import json, sftforge, yaml\n"
        "from sftforge.config.schema import LaunchArguments\n"
        "from sftforge.launch import launch_command\n"
        "cmd = launch_command(LaunchArguments('zero3'), ['r.yaml'], 'no')\n"
        "doc = yaml.safe_load(open(cmd[cmd.index('--config_file') + 1]))\n"
        "print(json.dumps([sftforge.__file__, doc['deepspeed_config']['deepspeed_config_file']]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}  # the install first; dependencies from this environment
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    module, ds_json = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(module) == site / "sftforge" / "__init__.py"
    assert Path(ds_json) == (site / "sftforge" / "configs" / "deepspeed" / "zero3.json").resolve()
    listing = subprocess.run([sys.executable, "-m", "sftforge", "configs"], cwd=elsewhere, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert str(site / "sftforge" / "configs" / "accelerate" / "zero3.yaml") in listing.stdout

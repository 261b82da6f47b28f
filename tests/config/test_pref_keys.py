"""The `pref` section: TRL's names as aliases, and the checks that keep preference keys where they apply."""

from __future__ import annotations

import pytest

from sftforge.config import load_config
from sftforge.errors import ConfigError

BASE = ["--model_name_or_path", "m", "--train_data_path", "README.md"]


def problems(*argv: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE, *argv])
    return info.value.problems


def test_trl_names_are_aliases_of_llama_factorys():
    cfg = load_config(None, [*BASE, "--stage", "dpo", "--beta", "0.2", "--loss_type", "ipo", "--rpo_alpha", "0.5",
                             "--label_smoothing", "0.1"])  # fmt: skip
    assert (cfg.pref.pref_beta, cfg.pref.pref_loss, cfg.pref.pref_ftx) == (0.2, "ipo", 0.5)
    assert cfg.pref.dpo_label_smoothing == 0.1 and cfg.pref.loss("dpo") == "ipo"
    kto = load_config(None, [*BASE, "--stage", "kto", "--desirable_weight", "1.5"])
    assert kto.pref.kto_chosen_weight == 1.5 and kto.pref.loss("kto") == "kto"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--pref_beta", "0.2"], "pref_beta: applies to preference training only; set stage: dpo"),
        (["--stage", "dpo", "--pref_loss", "orpo", "--ref_model", "x"], "ref_model: pref_loss orpo uses no reference"),
        (["--stage", "dpo", "--packing", "true"], "packing: not with stage dpo: TRL's preference trainers pad"),
        (["--stage", "kto", "--pref_loss", "sigmoid"], "pref_loss: sigmoid is a paired loss; stage kto trains kto"),
        (["--stage", "dpo", "--pref_loss", "kto"], "pref_loss: kto trains unpaired rows; set stage: kto"),
        (["--stage", "dpo", "--pref_beta", "0"], "pref_beta: 0.0 must be > 0"),
        (["--stage", "dpo", "--pref_loss", "exo_pair"], "dpo_label_smoothing: pref_loss exo_pair needs a value > 0"),
        (["--stage", "dpo", "--eval_generation", "true"], "eval_generation: not with stage dpo"),
        (["--stage", "kto", "--per_device_train_batch_size", "1"], "stage kto needs at least 2 per device"),
    ],
)  # fmt: skip
def test_mistakes_are_named(argv, words):
    found = problems(*argv)
    assert any(words in p for p in found), found


def test_the_written_config_keeps_the_pref_section_and_reloads(tmp_path):
    from sftforge.config import dump_config

    cfg = load_config(None, [*BASE, "--stage", "dpo", "--pref_loss", "simpo", "--simpo_gamma", "1.0"])
    path = dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(path), [])
    assert again.pref.pref_loss == "simpo" and again.pref.simpo_gamma == 1.0 and again.data.stage == "dpo"
    sft = load_config(None, BASE)
    assert (
        "pref_beta" not in dump_config(sft, tmp_path / "s.yaml").read_text()
    )  # SFT recipes stay as they were

"""Recipes brought from LLaMA-Factory and TRL: their key names translate into sftforge's, their unsupported keys and
values are explained (not answered with a "did you mean" that points at an unrelated key), and a typo is matched
only within its own concept (`lora_*` among the peft keys, `dataset*` among the data keys)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from sftforge.config import load_config
from sftforge.config.foreign_keys import FOREIGN_KEYS
from sftforge.config.loader import _GUIDE_SWITCHES, ALIASES, FIELDS, _known_names
from sftforge.config.suggest import concept_of, suggest_key
from sftforge.errors import ConfigError


@pytest.fixture
def base(data_file: Path) -> list[str]:
    return ["--model_name_or_path", "m", "--train_data_path", str(data_file)]


def problems_of(argv: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, argv)
    return info.value.problems


# ---------------------------------------------------------------- did you mean, within the key's concept


def test_suggestions_stay_within_the_keys_concept():
    # Without the names that fit, the closest spelling anywhere is a false friend: lora_rank → local_rank (a
    # per-process rank), dataset → data_seed. Within the concept there is an answer, or none.
    names = {k: v for k, v in _known_names().items() if k != "lora_rank" and "dataset" not in k}
    assert difflib.get_close_matches("lora_rank", list(names), n=1) == ["local_rank"]
    assert suggest_key("lora_rank", names) == "lora_r"
    assert difflib.get_close_matches("dataset", list(names), n=1) == ["data_seed"]
    assert suggest_key("dataset", names) is None
    del names["micro_batch_size"]
    assert difflib.get_close_matches("batch_size", list(names), n=1) == [
        "block_size"
    ]  # max_length under stage pt
    assert suggest_key("batch_size", names) != "block_size"
    # a key of no known concept gets the closest name of any section
    assert suggest_key("learnig_rate", names) == "learning_rate"
    assert suggest_key("dataloader_num_worker", names) == "dataloader_num_workers"


def test_typo_in_a_recipe_suggests_within_its_concept(base):
    assert problems_of([*base, "--lora_rnak", "8"]) == ["unknown key 'lora_rnak'. Did you mean 'lora_rank'?"]
    assert "Did you mean 'dataset'?" in problems_of([*base, "--datset", "x"])[0]


def test_the_recipe_section_a_key_is_written_under_guides_the_match(tmp_path, data_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\npeft:\n  target: q_proj\n")
    assert problems_of_recipe(recipe) == ["unknown key 'target'. Did you mean 'lora_target'?"]
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\ntarget: q_proj\n")
    assert problems_of_recipe(recipe) == [
        "unknown key 'target'. Did you mean 'stage'?"
    ]  # no section: any name


def problems_of_recipe(recipe: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    return info.value.problems


def test_concept_of_reads_the_first_word():
    assert concept_of("lora_rnak") == "peft" and concept_of("datset_dir") is None
    assert concept_of("dataset_seed") == "data" and concept_of("model_max_lenght") == "model"
    assert concept_of("learning_rate") is None


# ---------------------------------------------------------------- other tools' keys and values


def test_llama_factory_stage_ppo_is_explained(base):
    (problem,) = problems_of([*base, "--stage", "ppo"])
    assert problem.startswith("stage: LLaMA-Factory's stage: ppo is not supported")
    assert "stage: sft" in problem and "dpo" in problem
    assert load_config(None, [*base, "--stage", "dpo"]).data.stage == "dpo"  # preference training is a stage
    assert load_config(None, [*base, "--stage", "sft"]).data.stage == "sft"
    assert (
        "not one of sft, pt, auto, dpo, kto" in problems_of([*base, "--stage", "sftt"])[0]
    )  # a plain typo stays plain


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("use_unsloth", "true", "use_liger_kernel"),
        ("ppo_epochs", "4", "reward models and PPO"),
        ("max_prompt_length", "512", "prompts are never cut"),
        ("tokenized_path", "cache/x", "caches tokenized data by content"),
        ("export_dir", "out", "sftforge merge"),
        ("use_galore", "true", "finetuning_type: lora"),
    ],
)
def test_foreign_keys_are_explained_not_guessed(base, key, value, words):
    (problem,) = problems_of([*base, f"--{key}", value])
    assert problem.startswith(f"{key}: not an sftforge key:") and words in problem
    assert "Did you mean" not in problem


def test_foreign_keys_are_no_valid_names():
    valid = set(FIELDS) | set(ALIASES) | set(_GUIDE_SWITCHES)
    assert not valid & set(FOREIGN_KEYS)


def test_deepspeed_stage_names_point_to_the_shipped_names(base):
    # the shipped names themselves are accepted (tests/config/test_deepspeed_names.py); other spellings of a
    # stage (LLaMA-Factory's ds_z3_offload_config, z2) point to them
    (problem,) = problems_of([*base, "--deepspeed", "ds_z3_offload_config"])
    assert "is a stage name sftforge does not ship" in problem
    assert "deepspeed: zero3_offload" in problem and "accelerate_config: zero3_offload" in problem
    assert "accelerate_config: zero2" in problems_of([*base, "--deepspeed", "z2"])[0]
    load_config(None, [*base, "--deepspeed", "zero3"])  # no ConfigError


# ---------------------------------------------------------------- translated keys


@pytest.mark.parametrize(
    ("extra", "section", "key", "expected"),
    [
        (["--train_on_prompt", "true"], "data", "train_on", "all"),
        (["--mask_history", "true"], "data", "train_on", "last_assistant"),
        (["--train_on_prompt", "false"], "data", "train_on", "all_assistant"),
        (["--neat_packing", "true"], "data", "packing", True),
        (["--flash_attn", "disabled"], "model", "attn_implementation", "eager"),
        (["--flash_attn", "sdpa"], "model", "attn_implementation", "sdpa"),
        (["--overwrite_cache", "true"], "data", "preprocessing_cache", True),
        (["--assistant_only_loss", "false"], "data", "train_on", "all"),
        (["--completion_only_loss", "true"], "data", "train_on", "all_assistant"),
        (["--dataset_text_field", "body"], "data", "text_column", "body"),
        (["--enable_liger_kernel", "false"], "training", "use_liger_kernel", False),
        (["--micro_batch_size", "3"], "training", "per_device_train_batch_size", 3),
        (["--sequence_len", "512"], "data", "max_length", 512),
        (["--finetuning_type", "lora", "--additional_target", "embed_tokens,lm_head"], "peft", "modules_to_save",
         ["embed_tokens", "lm_head"]),
    ],
)  # fmt: skip
def test_llama_factory_and_trl_keys_translate(base, extra, section, key, expected):
    cfg = load_config(None, [*base, *extra])
    assert getattr(getattr(cfg, section), key) == expected


def test_translated_key_and_its_target_together_are_a_contradiction(base):
    (problem,) = problems_of([*base, "--train_on_prompt", "true", "--train_on", "last_assistant"])
    assert problem == (
        "train_on_prompt: means train_on: all here, and train_on is already set (last_assistant); keep one of the two."
    )
    assert (
        "flash_attn: 'fa3' is not one of auto, fa2, sdpa, disabled"
        in problems_of([*base, "--flash_attn", "fa3"])[0]
    )
    assert "bitsandbytes only" in problems_of([*base, "--quantization_method", "gptq"])[0]


def test_new_special_tokens_comma_string_or_list(base, tmp_path, data_file):
    cfg = load_config(None, [*base, "--new_special_tokens", "<a>, <b>,<a>,"])
    assert cfg.model.new_special_tokens == ["<a>", "<b>"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model_name_or_path: m\ntrain_data_path: {data_file}\nnew_special_tokens: ['<x>', '<y>']\n"
    )
    assert load_config(recipe).model.new_special_tokens == ["<x>", "<y>"]


def test_plot_loss_is_a_training_key(base):
    assert load_config(None, base).training.plot_loss is True
    assert load_config(None, [*base, "--plot_loss", "false"]).training.plot_loss is False


def test_template_names_are_checked_at_config_time(base):
    assert load_config(None, [*base, "--template", "qwen"]).data.chat_template == "qwen"
    (problem,) = problems_of([*base, "--template", "qwen2.6"])
    assert "'qwen2.6' is neither a .jinja file nor a shipped template name. Did you mean" in problem
    assert "llama3" in problem and "template: tokenizer" in problem
    (nothink,) = problems_of([*base, "--template", "qwen3_nothink"])
    assert "Instruct-2507" in nothink and "Did you mean" not in nothink
    (missing,) = problems_of([*base, "--template", "templates/mine.jinja"])
    assert "chat_template: file 'templates/mine.jinja' does not exist" in missing

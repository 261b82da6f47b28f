"""LLaMA-Factory's `dataset` + `dataset_dir` (dataset_info.json) resolve to sftforge's data keys: one name to
train_data_path + columns/tags, several to `datasets:` sources, eval_dataset to eval_data_path; every problem is
reported at config time with the registry's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.config import load_config
from sftforge.errors import ConfigError

ALPACA = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(3)]
SHAREGPT = [
    {"dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "yo"}], "sys": "Be brief."}
]


def write_registry(folder: Path, entries: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qa.json").write_text(json.dumps(ALPACA))
    (folder / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in SHAREGPT) + "\n")
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    return folder


ENTRIES = {
    "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer"}, "num_samples": 2},
    "chat": {
        "file_name": "chat.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "system": "sys"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "human", "assistant_tag": "bot"},
    },
    "hub": {"hf_hub_url": "org/set", "subset": "en", "split": "dev"},
}


def config(*argv: str):
    return load_config(None, ["--model_name_or_path", "m", *argv])


def problems(*argv: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(*argv)
    return info.value.problems


def test_one_name_is_train_data_path_with_its_columns(tmp_path):
    folder = write_registry(tmp_path / "data", ENTRIES)
    cfg = config("--dataset", "qa", "--dataset_dir", str(folder))
    assert cfg.data.train_data_path == [str(folder / "qa.json")]
    assert cfg.data.columns == {"prompt": "question", "response": "answer"}
    assert cfg.data.max_samples == 2  # num_samples
    assert {"dataset", "dataset_dir"} <= cfg.explicit


def test_default_dataset_dir_is_data_in_the_working_directory(tmp_path, monkeypatch):
    write_registry(tmp_path / "data", ENTRIES)
    monkeypatch.chdir(tmp_path)
    cfg = config("--dataset", "chat")
    assert cfg.data.train_data_path == [str(Path("data") / "chat.jsonl")]
    assert cfg.data.tags["user_tag"] == "human" and cfg.data.columns["messages"] == "dialog"


def test_hub_entry_is_dataset_name_with_subset_and_split(tmp_path):
    folder = write_registry(tmp_path / "data", ENTRIES)
    cfg = config("--dataset", "hub", "--dataset_dir", str(folder))
    assert (cfg.data.dataset_name, cfg.data.dataset_config, cfg.data.dataset_train_split) == (
        "org/set",
        "en",
        "dev",
    )


def test_several_names_are_a_mixture_and_max_samples_caps_each(tmp_path):
    folder = write_registry(tmp_path / "data", ENTRIES)
    cfg = config("--dataset", "qa, chat", "--dataset_dir", str(folder), "--max_samples", "1",
                 "--interleave_probs", "0.5,0.5")  # fmt: skip
    qa, chat = cfg.data.datasets
    assert (
        qa["path"] == str(folder / "qa.json")
        and qa["max_samples"] == 1
        and qa["columns"]["prompt"] == "question"
    )
    assert chat["path"] == str(folder / "chat.jsonl") and chat["tags"]["assistant_tag"] == "bot"
    assert chat["max_samples"] == 1 and cfg.data.max_samples is None
    assert any(n.startswith("data mix: 2 sources, interleave_under") for n in cfg.notes)


def test_eval_dataset_is_eval_data_path(tmp_path):
    folder = write_registry(tmp_path / "data", {**ENTRIES, "qa_eval": ENTRIES["qa"]})
    cfg = config("--dataset", "qa", "--eval_dataset", "qa_eval", "--dataset_dir", str(folder))
    assert cfg.data.eval_data_path == [str(folder / "qa.json")]
    (problem,) = problems("--dataset", "qa", "--eval_dataset", "chat", "--dataset_dir", str(folder))
    assert "eval_dataset: 'chat' has other columns than the training data" in problem


def test_pretraining_names_give_files_and_the_text_column(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "c4.jsonl").write_text('{"body": "a document"}\n')
    (folder / "dataset_info.json").write_text(
        json.dumps({"c4": {"file_name": "c4.jsonl", "columns": {"prompt": "body"}}})
    )
    cfg = config("--stage", "pt", "--dataset", "c4", "--dataset_dir", str(folder))
    assert cfg.data.train_data_path == [str(folder / "c4.jsonl")] and cfg.data.text_column == "body"


def test_registry_problems_name_the_registry(tmp_path):
    folder = write_registry(tmp_path / "data", {**ENTRIES, "pairs": {"file_name": "qa.json", "ranking": True},
                                                "gone": {"file_name": "gone.json"}})  # fmt: skip
    registry = folder / "dataset_info.json"
    (typo,) = problems("--dataset", "qaa", "--dataset_dir", str(folder))
    assert typo.startswith(f"dataset: 'qaa' is not in {registry}. Did you mean 'qa'? Registered: qa, chat")
    (pairs,) = problems("--dataset", "pairs", "--dataset_dir", str(folder))
    assert "ranking: a preference dataset (chosen/rejected answers): train it with stage: dpo" in pairs
    assert config("--dataset", "pairs", "--dataset_dir", str(folder), "--stage", "dpo").data.stage == "dpo"
    (gone,) = problems("--dataset", "gone", "--dataset_dir", str(folder))
    assert f"file_name {str(folder / 'gone.json')!r} does not exist" in gone
    (no_registry,) = problems("--dataset", "qa", "--dataset_dir", str(tmp_path / "elsewhere"))
    assert "dataset_info.json (LLaMA-Factory's registry" in no_registry and "does not exist" in no_registry
    both = problems(
        "--dataset", "qa", "--dataset_dir", str(folder), "--train_data_path", str(folder / "qa.json")
    )
    assert both == ["dataset and train_data_path both name the training data; keep one."]


@pytest.mark.needs_shared
def test_llama_factory_demo_data_through_its_registry(tmp_path, shared_data, tiny_model_dir):
    """LLaMA-Factory's own entries for its demo files (as in its data/dataset_info.json), read from ../shared and
    tokenized by the real pipeline: every row of both sources is readable, ShareGPT tool calls included."""
    from sftforge.train.run import prepare_tokenized_data

    registry = {
        "alpaca_en_demo": {"file_name": str(shared_data / "alpaca_en_demo.json")},
        "glaive_toolcall_en_demo": {
            "file_name": str(shared_data / "glaive_toolcall_en_demo.json"),
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry))
    cfg = load_config(None, ["--model_name_or_path", str(tiny_model_dir), "--dataset",
                             "alpaca_en_demo,glaive_toolcall_en_demo", "--dataset_dir", str(tmp_path),
                             "--max_samples", "8", "--max_length", "4096"])  # fmt: skip
    alpaca, glaive = cfg.data.datasets
    assert alpaca == {
        "name": "alpaca_en_demo",
        "path": str(shared_data / "alpaca_en_demo.json"),
        "max_samples": 8,
    }
    assert glaive["columns"] == {"messages": "conversations", "tools": "tools"}
    _, data = prepare_tokenized_data(cfg)
    assert len(data.train) == 16  # max_samples: 8 per dataset, as in LLaMA-Factory
    assert set(data.train_stats.formats) == {"alpaca", "sharegpt"}
    assert set(data.train_stats.dropped) <= {"exceeds_max_length"}, data.train_stats  # every row was readable

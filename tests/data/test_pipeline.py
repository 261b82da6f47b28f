"""Pipeline: real datasets tokenize with exactly the assistant tokens trained; bad rows stop or are counted."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sftforge.config.schema import DataArguments
from sftforge.data.cache import data_digest
from sftforge.data.masking import IGNORE_INDEX
from sftforge.data.pipeline import (
    Example,
    TokenizeSpec,
    build_examples,
    prepare_data,
    process_row,
    split_holdout,
)
from sftforge.data.readers import SourceRow, iter_rows
from sftforge.errors import DataError

IM_END = "<|im_end|>"
HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def make_spec(tok: Any, max_length: int = 4096) -> TokenizeSpec:
    template = tok.chat_template
    return TokenizeSpec.build(tok, template, max_length, truncation="right")


@pytest.fixture(scope="module")
def spec(tok: Any) -> TokenizeSpec:
    return make_spec(tok)


def msg_row(*turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def good(i: int) -> dict[str, Any]:
    return msg_row(("user", f"Question number {i}?"), ("assistant", f"Answer number {i}."))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Each item is a row (dumped as JSON) or a str/bytes written as the raw line."""
    raw = []
    for line in lines:
        if isinstance(line, bytes):
            raw.append(line)
        else:
            raw.append((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)).encode())
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def trained_runs(example: Example) -> list[list[int]]:
    groups: list[list[int]] = []
    for k, label in enumerate(example.labels):
        if label != IGNORE_INDEX:
            if groups and groups[-1][-1] == k - 1:
                groups[-1].append(k)
            else:
                groups.append([k])
    return groups


def decode(tok: Any, token_ids: list[int]) -> str:
    return tok.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# --- the acceptance test on real data -------------------------------------------------------------------------


def raw_rows(path: Path) -> list[dict[str, Any]]:
    """The file parsed independently of sftforge's readers."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def tool_call_text(value: str) -> str:
    """What the default ChatML template renders for a ShareGPT function_call turn (tojson = json.dumps)."""
    call = json.loads(value)
    assert isinstance(call, dict), "the demo data holds one call per function_call turn"
    args = call.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args)
    name, arguments = json.dumps(call["name"], ensure_ascii=False), json.dumps(args, ensure_ascii=False)
    return f'<tool_call>{{"name": {name}, "arguments": {arguments}}}</tool_call>'


def expected_turns(fmt: str, row: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(what each trained assistant turn renders to, the texts of the turns that must not be trained)."""
    if fmt == "alpaca":
        return [row["output"]], [row["instruction"], row.get("input", "")]
    trained: list[str] = []
    others: list[str] = []
    if fmt == "sharegpt":
        for turn in row["conversations"]:
            if turn["from"] == "gpt":
                trained.append(turn["value"])
            elif turn["from"] == "function_call":
                trained.append(tool_call_text(turn["value"]))
            else:
                assert turn["from"] in ("human", "observation")
                others.append(turn["value"])
        return trained, others
    for m in row["messages"]:  # v1: typed text parts and a loss_weight per message
        text = "".join(part["value"] for part in m["content"])
        if m["role"] == "assistant" and m.get("loss_weight", 1) > 0:
            trained.append(text)
        else:
            others.append(text)
    return trained, others


REAL = [
    ("alpaca_en_demo.json", "alpaca", 999),
    ("alpaca_zh_demo.json", "alpaca", 1000),
    ("glaive_toolcall_en_demo.json", "sharegpt", 300),
    ("v1_sft_demo.jsonl", "messages", 500),
]


@pytest.mark.needs_shared
@pytest.mark.parametrize(("name", "fmt", "n_rows"), REAL, ids=[r[0] for r in REAL])
def test_real_data_trains_exactly_the_assistant_tokens(
    shared_data: Path, tok: Any, name: str, fmt: str, n_rows: int
) -> None:
    path = shared_data / name
    # Large enough that no row truncates (byte-level BPE with 1k tokens is verbose: glaive rows reach ~5k).
    examples, stats = build_examples(iter_rows(path), make_spec(tok, 1 << 15), "error", None, "test")
    assert stats.rows == stats.kept == len(examples) == n_rows
    assert stats.dropped == Counter() and stats.truncated == 0
    assert stats.formats == Counter({fmt: n_rows})

    im_end = tok.convert_tokens_to_ids(IM_END)
    header = tok(HEADER, add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    total_trained = 0
    n_tool_calls = 0
    for example, row in zip(examples, raw_rows(path), strict=True):
        where = example.source
        texts, others = expected_turns(fmt, row)
        # The independent count: each trained turn's text tokenized alone, plus 1 for its <|im_end|>.
        counts = [len(t) + 1 for t in tok(texts, add_special_tokens=False)["input_ids"]]
        runs = trained_runs(example)
        assert [len(r) for r in runs] == counts, where
        assert sum(label != IGNORE_INDEX for label in example.labels) == sum(counts), where
        total_trained += sum(counts)
        n_tool_calls += sum(t.startswith("<tool_call>") for t in texts)
        for run, text in zip(runs, texts, strict=True):
            ids = [example.input_ids[k] for k in run]
            assert [example.labels[k] for k in run] == ids, where
            assert decode(tok, ids) == text + IM_END, where
            assert ids[-1] == im_end, where
            # Each run starts right after an assistant header and stops before the "\n" that follows <|im_end|>.
            assert example.input_ids[run[0] - len(header) : run[0]] == header, where
            assert example.input_ids[run[-1] + 1 : run[-1] + 2] == newline, where
        # No user/system/tool text is trained (unless the assistant happens to repeat it).
        trained_text = decode(
            tok, [i for i, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
        )
        for other in others:
            if other.strip() and not any(other in t for t in texts):
                assert other not in trained_text, where
        # And every one of those turns is in the input, as context.
        full = decode(tok, example.input_ids)
        assert all(o in full for o in others), where
    assert stats.trained_tokens == total_trained
    assert stats.tokens == sum(len(e.input_ids) for e in examples)
    if fmt == "sharegpt":
        assert n_tool_calls == 211  # every function_call turn was trained as a rendered <tool_call>


def test_loss_weight_zero_assistant_turn_is_context_only(tok: Any, spec: TokenizeSpec) -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Greet me."}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Hello (old)."}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Again."}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Hello again."}], "loss_weight": 1.0},
        ]
    }
    status, fmt, (example, tok_out) = process_row(spec, SourceRow(row, "v1.jsonl:1"))
    assert (status, fmt, tok_out.truncated) == ("ok", "messages", False)
    runs = trained_runs(example)
    assert [decode(tok, [example.input_ids[k] for k in r]) for r in runs] == ["Hello again." + IM_END]
    assert "Hello (old)." in decode(tok, example.input_ids)


# --- bad rows ---------------------------------------------------------------------------------------------------

BAD_ROWS = {
    "invalid_json": '{"messages": [{"role": "user", "content": "hi"}',
    "no_assistant_turn": msg_row(("system", "S"), ("user", "Only a question")),
    "unknown_role": msg_row(("user", "hi"), ("critic", "meh"), ("assistant", "ok")),
    "empty_content": msg_row(("user", "   "), ("assistant", "ok")),
}
DETAILS = {
    "invalid_json": "invalid JSON at column",
    "no_assistant_turn": "no assistant turn",
    "unknown_role": "turn 1 has role 'critic'",
    "empty_content": "turn 0 (user) is empty",
}


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_strict_mode_names_file_line_and_reason(tmp_path: Path, spec: TokenizeSpec, reason: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [good(1), good(2), BAD_ROWS[reason], good(4)])
    with pytest.raises(DataError) as err:
        build_examples(iter_rows(path), spec, "error", None, "test")
    message = str(err.value)
    assert message.startswith(f"{path}:3: ")
    assert DETAILS[reason] in message and f"[{reason}]" in message
    assert "on_bad_rows: skip" in message


def bad_corpus(tmp_path: Path) -> tuple[Path, Counter, list[int]]:
    """A JSONL file mixing good rows with one row per kind of problem; returns (path, reasons, good lines)."""
    lines: list[Any] = [
        good(1),
        BAD_ROWS["invalid_json"],
        BAD_ROWS["no_assistant_turn"],
        good(4),
        BAD_ROWS["unknown_role"],
        BAD_ROWS["empty_content"],
        msg_row(("assistant", "  ")),  # empty_content as well: two of that reason
        {"messages": []},
        msg_row(("user", "hi"), ("system", "late"), ("assistant", "ok")),
        "[1, 2]",
        b'{"text": "\xff\xfe bad bytes"}',
        "",  # a blank line is not a row
        good(13),
        msg_row(("user", "a"), ("user", "b"), ("assistant", "two user turns in a row are fine")),
    ]
    reasons = Counter(
        invalid_json=1,
        no_assistant_turn=1,
        unknown_role=1,
        empty_content=2,
        empty_messages=1,
        misplaced_system=1,
        not_an_object=1,
        not_utf8=1,
    )
    return write_jsonl(tmp_path / "mixed.jsonl", lines), reasons, [1, 4, 13, 14]


def test_skip_mode_counts_each_reason_and_keeps_the_good_rows(tmp_path: Path, spec: TokenizeSpec) -> None:
    path, reasons, good_lines = bad_corpus(tmp_path)
    examples, stats = build_examples(iter_rows(path), spec, "skip", None, "test")
    assert stats.dropped == reasons
    assert [e.source for e in examples] == [f"{path}:{n}" for n in good_lines]
    assert stats.rows == sum(reasons.values()) + len(good_lines) and stats.kept == len(good_lines)
    assert stats.formats == Counter(messages=len(good_lines)) and stats.truncated == 0
    assert all(e.input_ids for e in examples)
    assert stats.trained_tokens == sum(sum(label != IGNORE_INDEX for label in e.labels) for e in examples) > 0


def test_truncation_is_counted_in_every_mode(tmp_path: Path, tok: Any) -> None:
    """A row truncated to nothing trainable is dropped and counted even in strict mode (not a data mistake)."""
    long_prompt = msg_row(("user", "word " * 200), ("assistant", "Short answer."))
    long_answer = msg_row(("user", "Hi"), ("assistant", "word " * 200))
    path = write_jsonl(tmp_path / "long.jsonl", [good(1), long_prompt, long_answer])
    for mode in ("error", "skip"):
        examples, stats = build_examples(iter_rows(path), make_spec(tok, 64), mode, None, "test")
        assert [e.source for e in examples] == [f"{path}:1", f"{path}:3"]
        assert stats.dropped == Counter(no_trainable_tokens_after_truncation=1)
        assert stats.truncated == 1 and stats.kept == 2 and stats.rows == 3
        assert len(examples[1].input_ids) == 64 and examples[1].labels[-1] != IGNORE_INDEX


def test_parallel_preprocessing_matches_serial(tmp_path: Path, spec: TokenizeSpec) -> None:
    lines = [good(i) for i in range(1, 6)] + [BAD_ROWS["unknown_role"]] + [good(i) for i in range(7, 10)]
    path = write_jsonl(tmp_path / "small.jsonl", lines)
    serial, serial_stats = build_examples(iter_rows(path), spec, "skip", None, "test")
    parallel, parallel_stats = build_examples(iter_rows(path), spec, "skip", 2, "test")
    assert parallel == serial and len(serial) == 8
    assert parallel_stats == serial_stats
    assert serial_stats.dropped == Counter(unknown_role=1)


# --- prepare_data -----------------------------------------------------------------------------------------------


def data_args(**kwargs: Any) -> DataArguments:
    return DataArguments(**kwargs)


def test_all_bad_training_file_is_an_error(tmp_path: Path, spec: TokenizeSpec) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl", [BAD_ROWS["no_assistant_turn"]] * 2 + [BAD_ROWS["invalid_json"]]
    )
    # Even when max_bad_row_fraction lets every row be bad, an empty training set stops the run.
    args = data_args(train_data_path=[str(path)], on_bad_rows="skip", max_bad_row_fraction=1.0)
    with pytest.raises(DataError) as err:
        prepare_data(args, spec, seed=0)
    assert "the training set is empty" in str(err.value)
    assert "no_assistant_turn: 2" in str(err.value) and "invalid_json: 1" in str(err.value)
    # With the default threshold the bad-row fraction stops it first, with a better hint.
    with pytest.raises(DataError, match=r"3 of 3 train rows read \(100\.0%\) are unusable"):
        prepare_data(data_args(train_data_path=[str(path)], on_bad_rows="skip"), spec, seed=0)


# --- max_bad_row_fraction ---------------------------------------------------------------------------------------


def mostly_good(tmp_path: Path, n_good: int, bad: list[Any], name: str = "train.jsonl") -> Path:
    return write_jsonl(tmp_path / name, [good(i) for i in range(n_good)] + bad)


def test_too_many_bad_rows_stop_skip_mode_with_counts_threshold_and_hint(
    tmp_path: Path, spec: TokenizeSpec
) -> None:
    bad = [BAD_ROWS["invalid_json"]] * 2 + [BAD_ROWS["unknown_role"]]
    path = mostly_good(tmp_path, 7, bad)  # 3 of 10 bad
    with pytest.raises(DataError) as err:
        build_examples(iter_rows(path), spec, "skip", None, "t", max_bad_fraction=0.1, split="train")
    message = str(err.value)
    assert message.startswith(
        "3 of 10 train rows read (30.0%) are unusable, more than max_bad_row_fraction=0.1"
    )
    assert "Dropped by reason: invalid_json: 2, unknown_role: 1." in message
    # The first row of each reason is shown with its file:line, so the user sees what is wrong.
    assert f"  first invalid_json: {path}:8: invalid JSON at column" in message
    assert f"  first unknown_role: {path}:10: turn 1 has role 'critic'" in message
    assert "fix the data" in message and "raise max_bad_row_fraction" in message


def test_bad_fraction_at_or_under_the_threshold_keeps_going(tmp_path: Path, spec: TokenizeSpec) -> None:
    path = mostly_good(tmp_path, 9, [BAD_ROWS["unknown_role"]])  # exactly 10%: not *more* than 0.1
    examples, stats = build_examples(iter_rows(path), spec, "skip", None, "t", max_bad_fraction=0.1)
    assert len(examples) == 9 and stats.dropped == Counter(unknown_role=1)
    with pytest.raises(DataError, match=r"1 of 10 rows read \(10\.0%\) are unusable"):
        build_examples(iter_rows(path), spec, "skip", None, "t", max_bad_fraction=0.05)
    # 0.0 tolerates none, 1.0 tolerates all; the library default (no threshold given) never stops.
    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", [BAD_ROWS["unknown_role"]] * 3)
    for threshold in ({"max_bad_fraction": 1.0}, {}):
        examples, stats = build_examples(iter_rows(all_bad), spec, "skip", None, "t", **threshold)
        assert examples == [] and stats.dropped == Counter(unknown_role=3)


def test_length_drops_are_not_bad_rows(tmp_path: Path, tok: Any) -> None:
    """Rows dropped for length (DROPPED_NOT_BAD) count as read but not as unusable."""
    long_answer = msg_row(("user", "Hi"), ("assistant", "word " * 200))
    path = mostly_good(tmp_path, 2, [long_answer] * 3 + [BAD_ROWS["unknown_role"]])
    spec = TokenizeSpec.build(tok, tok.chat_template, 64, truncation="drop")
    examples, stats = build_examples(iter_rows(path), spec, "skip", None, "t", max_bad_fraction=0.2)
    assert len(examples) == 2 and stats.dropped == Counter(exceeds_max_length=3, unknown_role=1)
    with pytest.raises(DataError, match=r"Dropped by reason: unknown_role: 1\.") as err:
        build_examples(iter_rows(path), spec, "skip", None, "t", max_bad_fraction=0.1)
    assert "1 of 6 rows read" in str(err.value) and "exceeds_max_length" not in str(err.value)


def test_length_drops_alone_never_trip_the_threshold(tmp_path: Path, tok: Any) -> None:
    path = mostly_good(tmp_path, 1, [msg_row(("user", "Hi"), ("assistant", "word " * 200))] * 3)
    spec64 = TokenizeSpec.build(tok, tok.chat_template, 64, truncation="drop")
    for mode in ("error", "skip"):
        examples, stats = build_examples(iter_rows(path), spec64, mode, None, "t", max_bad_fraction=0.0)
        assert len(examples) == 1 and stats.dropped == Counter(exceeds_max_length=3)


def test_prepare_data_applies_max_bad_row_fraction_to_train_and_eval(
    tmp_path: Path, spec: TokenizeSpec
) -> None:
    train = mostly_good(tmp_path, 9, [BAD_ROWS["unknown_role"]], "train.jsonl")  # 10%
    evaluation = mostly_good(tmp_path, 3, [BAD_ROWS["invalid_json"]], "eval.jsonl")  # 25%
    args = dict(train_data_path=[str(train)], on_bad_rows="skip", preprocessing_cache=False)
    data = prepare_data(data_args(**args), spec, seed=0)  # default 0.1: 10% is fine
    assert len(data.train) == 9 and data.train_stats.dropped == Counter(unknown_role=1)
    with pytest.raises(DataError, match=r"^1 of 10 train rows read .* max_bad_row_fraction=0\.05"):
        prepare_data(data_args(**args, max_bad_row_fraction=0.05), spec, seed=0)
    args["eval_data_path"] = [str(evaluation)]
    with pytest.raises(DataError, match=r"^1 of 4 eval rows read \(25\.0%\)") as err:
        prepare_data(data_args(**args), spec, seed=0)
    assert f"first invalid_json: {evaluation}:4: " in str(err.value)
    data = prepare_data(data_args(**args, max_bad_row_fraction=0.25), spec, seed=0)
    assert len(data.eval) == 3 and data.eval_stats is not None
    assert data.eval_stats.dropped == Counter(invalid_json=1)


def test_a_cache_hit_still_checks_the_threshold(tmp_path: Path, spec: TokenizeSpec) -> None:
    """The threshold is not a cache input: a lower one must stop a run whose data the cache already holds."""
    path = mostly_good(tmp_path, 8, [BAD_ROWS["unknown_role"], BAD_ROWS["invalid_json"]])  # 20%
    args = dict(train_data_path=[str(path)], on_bad_rows="skip", cache_dir=str(tmp_path / "cache"))
    stored = prepare_data(data_args(**args, max_bad_row_fraction=0.5), spec, seed=0)
    assert stored.cache is not None and stored.cache.state == "stored"
    hit = prepare_data(data_args(**args, max_bad_row_fraction=0.3), spec, seed=0)
    assert hit.cache is not None and hit.cache.state == "hit" and len(hit.train) == 8
    with pytest.raises(DataError, match=r"^2 of 10 train rows read \(20\.0%\).*invalid_json: 1"):
        prepare_data(data_args(**args), spec, seed=0)


@pytest.mark.parametrize("cache", [True, False])
def test_unusable_files_name_their_config_key(tmp_path: Path, spec: TokenizeSpec, cache: bool) -> None:
    good_file = mostly_good(tmp_path, 3, [])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")
    base = dict(train_data_path=[str(good_file)], preprocessing_cache=cache, cache_dir=str(tmp_path / "c"))
    cases = [
        ({"train_data_path": [str(empty)]}, f"train_data_path: {empty}: the file is empty"),
        ({"eval_data_path": [str(empty)]}, f"eval_data_path: {empty}: the file is empty"),
        ({"train_data_path": [str(folder)]}, f"train_data_path: {folder}: the directory holds no data file"),
        ({"eval_data_path": [str(tmp_path / "no.jsonl")]}, "eval_data_path: "),
    ]
    for override, expected in cases:
        with pytest.raises(DataError) as err:
            prepare_data(data_args(**{**base, **override}), spec, seed=0)
        assert str(err.value).startswith(expected), str(err.value)
    # The resume check hashes the training files before any row is read: it names the key as well.
    with pytest.raises(
        DataError, match=f"^train_data_path: {re.escape(str(folder))}: the directory holds no"
    ):
        data_digest(data_args(train_data_path=[str(folder)]))


def test_eval_split_ratio_is_deterministic_and_disjoint(tmp_path: Path, spec: TokenizeSpec) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(1, 11)])
    args = data_args(train_data_path=[str(path)], eval_split_ratio=0.3)
    first = prepare_data(args, spec, seed=0)
    assert len(first.train) == 7 and len(first.eval) == 3 and first.eval_stats is None
    sources = [e.source for e in first.train + first.eval]
    assert sorted(sources) == sorted(f"{path}:{n}" for n in range(1, 11))
    # Both sides keep the file order.
    for side in (first.train, first.eval):
        lines = [int(e.source.rsplit(":", 1)[1]) for e in side]
        assert lines == sorted(lines)

    again = prepare_data(args, spec, seed=0)
    assert [e.source for e in again.eval] == [e.source for e in first.eval]
    others = {tuple(e.source for e in prepare_data(args, spec, seed=s).eval) for s in (1, 2, 3)}
    assert others - {tuple(e.source for e in first.eval)}  # the seed does pick the held-out rows


def test_split_holdout_sizes() -> None:
    examples = [Example([i], [i], f"f:{i}") for i in range(5)]
    for ratio, n_eval in ((0.01, 1), (0.2, 1), (0.5, 2), (0.99, 4)):
        train, held = split_holdout(examples, ratio, seed=0)
        assert len(held) == n_eval and len(train) == 5 - n_eval
        assert {e.source for e in train} | {e.source for e in held} == {e.source for e in examples}
    assert split_holdout(examples[:1], 0.5, seed=0) == (examples[:1], [])


def test_eval_data_path_is_used_instead_of_a_split(tmp_path: Path, spec: TokenizeSpec) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(1, 6)])
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [good(i) for i in range(100, 103)])
    args = data_args(train_data_path=[str(train_path)], eval_data_path=[str(eval_path)], eval_split_ratio=0.5)
    data = prepare_data(args, spec, seed=0)
    assert [e.source for e in data.train] == [f"{train_path}:{n}" for n in range(1, 6)]
    assert [e.source for e in data.eval] == [f"{eval_path}:{n}" for n in range(1, 4)]
    assert data.eval_stats is not None and data.eval_stats.rows == data.eval_stats.kept == 3
    assert data.train_stats.rows == 5


def test_max_samples_reads_only_the_first_rows(tmp_path: Path, spec: TokenizeSpec) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(1, 11)])
    data = prepare_data(data_args(train_data_path=[str(path)], max_samples=4), spec, seed=0)
    assert [e.source for e in data.train] == [f"{path}:{n}" for n in range(1, 5)]
    assert data.train_stats.rows == 4 and data.eval == [] and data.eval_stats is None


def test_assistant_first_row_is_a_counted_bad_row(spec: TokenizeSpec) -> None:
    status, reason, message = process_row(
        spec, SourceRow(msg_row(("assistant", "I speak first.")), "f.jsonl:7")
    )
    assert status == "bad" and reason == "assistant_first" and message.startswith("f.jsonl:7: ")


def test_dataset_name_can_be_a_saved_datasets_folder_with_test_split(
    tmp_path: Path, spec: TokenizeSpec
) -> None:
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([good(i) for i in range(6)]),
            "test": datasets.Dataset.from_list([good(i) for i in range(100, 102)]),
        }
    ).save_to_disk(str(folder))
    args = data_args(dataset_name=str(folder), dataset_test_split="test")
    data = prepare_data(args, spec, seed=0)
    assert len(data.train) == 6 and len(data.eval) == 2
    assert data.train[0].source == f"{folder}[train]#0" and data.eval[1].source == f"{folder}[test]#1"
    assert data.train_stats.formats == {"messages": 6}


@pytest.mark.parametrize("on_bad_rows", ["error", "skip"])
def test_json_array_broken_after_many_rows_stops_the_run(
    tmp_path: Path, spec: TokenizeSpec, on_bad_rows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader yields an array's rows as it parses; a syntax error far into the file still stops the run
    with file:line:col (rows before it were already tokenized, nothing is kept or cached)."""
    from sftforge.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 256)  # many blocks: rows are yielded before the error is seen
    path = tmp_path / "train.json"
    path.write_text(
        "[\n" + "".join(json.dumps(good(i)) + ",\n" for i in range(200)) + json.dumps(good(200)) + "\n"
    )
    seen: list[str] = []

    def rows() -> Any:
        for row in iter_rows(path):
            seen.append(row.source)
            yield row

    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:203:1: invalid JSON: Expecting ',' delimiter"
    ):
        build_examples(rows(), spec, on_bad_rows, None, "test")
    assert len(seen) == 201  # every row was read before the error
    args = data_args(train_data_path=[str(path)], on_bad_rows=on_bad_rows)
    with pytest.raises(DataError, match=rf"^train_data_path: {re.escape(str(path))}:203:1: invalid JSON"):
        prepare_data(args, spec, seed=0)

"""Training policies (train_on, per-message flags, train_on_reasoning) and truncation modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sftforge.data.conversation import Conversation, Message
from sftforge.data.masking import IGNORE_INDEX, MaskOptions
from sftforge.data.pipeline import TokenizeSpec, build_examples, process_row, tokenize_conversation
from sftforge.data.readers import SourceRow
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE
from sftforge.data.truncation import rounds
from sftforge.errors import DataError, RowError

IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def conv(*turns: tuple[str, str] | Message) -> Conversation:
    return Conversation([t if isinstance(t, Message) else Message(*t) for t in turns], format="messages")


def trained_runs(tok: Any, out: Any) -> list[str]:
    runs, current = [], []
    for token, label in zip(out.input_ids, out.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def encode(tok: Any, c: Conversation, **options: Any) -> Any:
    truncation = options.pop("truncation", "turns")
    max_length = options.pop("max_length", 4096)
    return tokenize_conversation(
        c, tok, DEFAULT_CHAT_TEMPLATE, max_length, MaskOptions(**options), truncation
    )


MULTI = (("system", "Be brief."), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))


def test_all_assistant_is_the_default(tok: Any) -> None:
    assert trained_runs(tok, encode(tok, conv(*MULTI))) == ["A1" + IM_END, "A2" + IM_END]


def test_last_assistant_trains_only_the_final_turn(tok: Any) -> None:
    assert trained_runs(tok, encode(tok, conv(*MULTI), train_on="last_assistant")) == ["A2" + IM_END]


def test_all_trains_every_token(tok: Any) -> None:
    out = encode(tok, conv(*MULTI), train_on="all")
    assert out.num_trained == len(out.input_ids)


def test_all_still_respects_an_explicit_train_false(tok: Any) -> None:
    c = conv(("user", "Q1"), Message("assistant", "SECRET", train=False), ("user", "Q2"), ("assistant", "A2"))
    text = "".join(trained_runs(tok, encode(tok, c, train_on="all")))
    assert "SECRET" not in text and "A2" + IM_END in text and "Q1" in text


def test_loss_weight_and_train_flags(tok: Any) -> None:
    c = conv(("user", "Q1"), Message("assistant", "A1", train=False), Message("user", "Q2", train=True),
             ("assistant", "A2"))  # fmt: skip
    # train: true on a user message trains its content (not its header); train: false silences a turn.
    assert trained_runs(tok, encode(tok, c)) == ["Q2", "A2" + IM_END]


def test_last_assistant_flagged_off_leaves_nothing(tok: Any) -> None:
    c = conv(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), Message("assistant", "A2", train=False))
    with pytest.raises(RowError) as err:
        encode(tok, c, train_on="last_assistant")
    assert err.value.reason == "no_trainable_tokens"


def test_train_on_reasoning_false_keeps_the_think_block_as_context(tok: Any) -> None:
    c = conv(("user", "Q"), Message("assistant", "The answer.", reasoning="Step one. Step two."))
    assert trained_runs(tok, encode(tok, c)) == [
        "<think>\nStep one. Step two.\n</think>\n\nThe answer." + IM_END
    ]
    out = encode(tok, c, train_on_reasoning=False)
    assert trained_runs(tok, out) == ["The answer." + IM_END]
    assert "Step one" in tok.decode(out.input_ids)


def test_train_on_reasoning_false_with_inline_think_in_content(tok: Any) -> None:
    c = conv(("user", "Q"), ("assistant", "<think>hmm</think>\nYes."))
    assert trained_runs(tok, encode(tok, c, train_on_reasoning=False)) == ["Yes." + IM_END]


# ---------------------------------------------------------------- truncation


LONG = conv(
    ("system", "S"), *[(r, f"{r} turn {i} " + "word " * 30) for i in range(4) for r in ("user", "assistant")]
)


def test_rounds_split_at_user_turns() -> None:
    head, groups = rounds(LONG)
    assert [m.role for m in head] == ["system"] and len(groups) == 4
    assert all([m.role for m in g] == ["user", "assistant"] for g in groups)


def test_turns_drops_earliest_rounds_and_keeps_system(tok: Any) -> None:
    full = encode(tok, LONG)
    out = encode(tok, LONG, max_length=len(full.input_ids) - 1)
    assert out.truncated and len(out.input_ids) < len(full.input_ids)
    text = tok.decode(out.input_ids)
    assert text.startswith("<|im_start|>system\nS<|im_end|>")  # system kept
    assert "user turn 0" not in text and "assistant turn 3" in text  # earliest round gone, last answer whole
    assert trained_runs(tok, out)[-1].endswith(IM_END)


def test_turns_drops_an_example_whose_last_round_alone_is_too_long(tok: Any) -> None:
    with pytest.raises(RowError) as err:
        encode(tok, LONG, max_length=20)
    assert err.value.reason == "exceeds_max_length"


def test_right_cuts_and_drop_and_error_modes(tok: Any) -> None:
    full = encode(tok, LONG)
    cut = encode(tok, LONG, max_length=len(full.input_ids) - 5, truncation="right")
    assert cut.truncated and cut.input_ids == full.input_ids[: len(full.input_ids) - 5]
    for mode, reason in (("drop", "exceeds_max_length"), ("error", "too_long")):
        with pytest.raises(RowError) as err:
            encode(tok, LONG, max_length=50, truncation=mode)
        assert err.value.reason == reason


def _row(c: Conversation) -> dict:
    return {"messages": [{"role": m.role, "content": m.content} for m in c.messages]}


def test_pipeline_counts_length_drops_in_error_mode_but_truncation_error_is_fatal(
    tok: Any, tmp_path: Path
) -> None:
    rows = [SourceRow(_row(LONG), f"f.jsonl:{i}") for i in (1, 2)] + [
        SourceRow(_row(conv(("user", "hi"), ("assistant", "yo"))), "f.jsonl:3")
    ]
    spec = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, 40, truncation="drop")
    examples, stats = build_examples(rows, spec, on_bad_rows="error", num_proc=None, desc="t")
    assert len(examples) == 1 and stats.dropped == {"exceeds_max_length": 2}
    strict = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, 40, truncation="error")
    with pytest.raises(DataError, match=r"f\.jsonl:1: .*truncation: error"):
        build_examples(rows, strict, on_bad_rows="skip", num_proc=None, desc="t")
    status, reason, _ = process_row(strict, rows[2])
    assert status == "ok"


def test_policy_keys_reach_training_through_the_recipe(
    tok: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from sftforge.config import load_config
    from sftforge.train.run import prepare_tokenized_data

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps(_row(conv(*MULTI))) + "\n")
    cfg = load_config(None, ["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                             "--train_on", "last_assistant", "--truncation", "right", "--train_on_reasoning", "false"])  # fmt: skip
    _, prepared = prepare_tokenized_data(cfg)
    ex = prepared.train[0]
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])
    assert trained == "A2" + IM_END


def test_sentinel_render_is_made_only_when_needed(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose turns the prefix diff places skip the third render (content sentinels); per-message flags and
    templates that rewrite content still get it, and with it the check that no user content is trained."""
    import sftforge.data.spans as spans

    calls = []
    real = spans.locate_parts
    monkeypatch.setattr(spans, "locate_parts", lambda *a: calls.append(1) or real(*a))
    assert trained_runs(tok, encode(tok, conv(*MULTI))) == ["A1" + IM_END, "A2" + IM_END]
    assert calls == []
    flagged = conv(
        ("user", "Q1"), ("assistant", "A1"), Message("user", "KEEP", train=True), ("assistant", "A2")
    )
    assert "KEEP" in "".join(trained_runs(tok, encode(tok, flagged)))
    assert calls == [1]
    # `loss_weight: 1` on assistant turns (LLaMA-Factory's v1 data marks every one) trains what the policy trains
    # anyway: the spans are still whole prefix-diff turns, so no third render
    weighted = conv(("user", "Q1"), Message("assistant", "A1", train=True), Message("user", "Q2", train=False),
                    Message("assistant", "A2", train=True))  # fmt: skip
    assert trained_runs(tok, encode(tok, weighted)) == ["A1" + IM_END, "A2" + IM_END]
    assert calls == [1]

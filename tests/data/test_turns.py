"""Templates that rewrite earlier turns: turn terminators, and `multi_turn` (auto / split / whole).

Harmony (gpt-oss) is our own template (tests/fixtures/chat_templates/harmony.jinja) with the "gptoss" family
tokenizer; Qwen3 is TRL's copy of its template (../shared) with the "qwen3" family tokenizer.

Data: the glaive rows are real (ShareGPT with real tool calls and results, multi-turn). The fixtures hold no real
reasoning, so `with_reasoning` derives it deterministically: each glaive row as OpenAI `messages`, every assistant
turn given a `reasoning_content` made from its own call or answer; the EDGE_CASES rows (ours) add reasoning and
inline `<think>` rows.

Every trained turn is checked against an oracle written by hand from each format (`completion`): the text the
model writes for that turn when it is the last message — reasoning, answer or tool call, and the token generation
stops on. It reads only the conversation, never sftforge's spans.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tokenizer_families import EDGE_CASES, family_tokenizer

from sftforge.data.conversation import Conversation, Message
from sftforge.data.formats import to_conversation
from sftforge.data.masking import IGNORE_INDEX, MaskOptions
from sftforge.data.pipeline import TokenizeSpec, build_examples, process_row, tokenize_row
from sftforge.data.readers import SourceRow, iter_rows
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, TemplateInfo

HARMONY = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "harmony.jinja"
QWEN3 = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "fixtures"
    / "chat_templates"
    / "trl"
    / "qwen3.jinja"
)
TEMPLATES = {"harmony": (HARMONY, "gptoss"), "qwen3": (QWEN3, "qwen3")}


@cache
def spec_for(name: str, multi_turn: str = "auto", max_length: int = 1 << 20, **options: Any) -> TokenizeSpec:
    path, family = TEMPLATES[name]
    if not path.is_file():
        pytest.skip(f"template not found: {path}")
    return TokenizeSpec.build(
        family_tokenizer(family),
        path.read_text(encoding="utf-8"),
        max_length,
        options=MaskOptions(**options),
        multi_turn=multi_turn,
    )


def row(*messages: dict[str, Any], tools: list[dict] | None = None) -> SourceRow:
    return SourceRow({"messages": list(messages), **({"tools": tools} if tools else {})}, "t.jsonl:1")


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def examples_of(status: str, payload: Any) -> list[tuple[Any, Any]]:
    assert status in ("ok", "split"), payload
    return payload.examples if status == "split" else [payload]


def trained_runs(tok: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


# ---------------------------------------------------------------- the oracle: each format, by hand


def completion(name: str, message: Message) -> str:
    """What the model writes for this assistant turn when it is the last message, through its stop token."""
    content, reasoning = message.content, message.reasoning
    if (
        name == "qwen3" and reasoning is None and "</think>" in content
    ):  # Qwen3 splits an inline <think> itself
        head, _, content = content.partition("</think>")
        reasoning, content = head.split("<think>")[-1].strip("\n"), content.lstrip("\n")
    calls = [c["function"] for c in message.tool_calls or []]
    if name == "harmony":
        out = ""
        analysis = (content or reasoning) if calls else reasoning
        if analysis:
            out += f"<|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant"
        if calls:  # one call per turn
            args = json.dumps(calls[0]["arguments"], ensure_ascii=False)
            return (
                out + f" to=functions.{calls[0]['name']}<|channel|>commentary json<|message|>{args}<|call|>"
            )
        return out + f"<|channel|>final<|message|>{content}<|return|>"
    out = f"<think>\n{(reasoning or '').strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
    for k, call in enumerate(calls):
        args = json.dumps(call["arguments"], ensure_ascii=False)
        out += (
            "\n" if content or k else ""
        ) + f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {args}}}\n</tool_call>'
    return out + "<|im_end|>"


def check_row(name: str, spec: TokenizeSpec, source: SourceRow, status: str, payload: Any) -> list[str]:
    """Every trained turn of the row's examples is exactly its oracle completion, once; split examples start
    with exactly the prompt inference sends; whole examples are exactly the template's render."""
    tok = spec.tokenizer
    conv = to_conversation(source.row, source=source.source)
    messages = conv.template_messages()

    def render(upto: int | None = None, prompt: bool = False) -> str:
        return tok.apply_chat_template(messages[:upto], tools=conv.tools, chat_template=spec.template.text,
                                       tokenize=False, add_generation_prompt=prompt)  # fmt: skip

    trainable = [i for i, m in enumerate(conv.messages) if m.role == "assistant" and m.train is not False]
    problems: list[str] = []
    pairs = examples_of(status, payload)
    turns = [int(e.source.split("#turn")[1]) for e, _ in pairs] if status == "split" else []
    if status == "split" and turns != trainable:
        return [f"split into turns {turns}, trainable {trainable}"]
    for k, (example, _) in enumerate(pairs):
        ids, labels = example.input_ids, example.labels
        runs = trained_runs(tok, ids, labels)
        wanted = [turns[k]] if status == "split" else trainable
        if runs != [completion(name, conv.messages[i]) for i in wanted]:
            problems.append(f"{example.source}: trained {runs} != as generated")
        text = tok.decode(ids, skip_special_tokens=False)
        if status == "ok" and text != render():
            problems.append(f"{example.source}: not the template's render")
        if status == "split":
            first = labels.index(next(label for label in labels if label != IGNORE_INDEX))
            if tok.decode(ids[:first], skip_special_tokens=False) != render(turns[k], prompt=True):
                problems.append(f"{example.source}: does not start with exactly the inference prompt")
    return problems


# ---------------------------------------------------------------- data: real glaive rows, derived reasoning


@cache
def glaive(shared: Path) -> tuple[SourceRow, ...]:
    return tuple(iter_rows(shared / "glaive_toolcall_en_demo.json"))


def with_reasoning(source: SourceRow) -> SourceRow:
    """Derived data: a real row as `messages`, with a reasoning for every assistant turn (made from the turn)."""
    conv = to_conversation(source.row, source=source.source)
    messages = []
    for message in conv.messages:
        out = message.to_template_dict()
        if message.role == "assistant":
            call = (message.tool_calls or [{}])[0].get("function")
            out["reasoning_content"] = (
                f"The user wants what {call['name']} gives; I call it with {len(call['arguments'])} arguments."
                if call
                else f"I answer in {len(message.content.split())} words."
            )
        messages.append(out)
    return SourceRow({"messages": messages, "tools": conv.tools}, source.source + "+reasoning")


def datasets(shared: Path) -> dict[str, list[SourceRow]]:
    edge = [SourceRow(r, f"edge:{case}") for case, r in EDGE_CASES.items()]
    return {
        "glaive (real)": list(glaive(shared)),
        "glaive + derived reasoning": [with_reasoning(r) for r in glaive(shared)],
        "edge cases (ours)": edge,
    }


# (template, dataset) → (rows trained whole, rows split, examples from the split rows); every row is trained.
EXPECTED = {
    ("harmony", "glaive (real)"): (75, 225, 846),
    ("harmony", "glaive + derived reasoning"): (39, 261, 918),
    ("harmony", "edge cases (ours)"): (10, 3, 7),
    ("qwen3", "glaive (real)"): (39, 261, 918),
    ("qwen3", "glaive + derived reasoning"): (75, 225, 846),
    ("qwen3", "edge cases (ours)"): (9, 4, 9),
}


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_reasoning_and_tool_rows_are_trained_as_generated(shared_data: Path, name: str) -> None:
    """Acceptance (issue 12, defect 6): with gpt-oss's and Qwen3's templates, on real tool-call rows and on
    reasoning rows, at least 95% of the rows are trained (here: all), and every trained turn is exactly what the
    model generates for it: its reasoning, answer or tool call and the token generation stops on."""
    spec = spec_for(name)
    for dataset, rows in datasets(shared_data).items():
        outcomes: Counter[str] = Counter()
        split_examples = 0
        problems: list[str] = []
        for source in rows:
            status, what, payload = process_row(spec, source)
            outcomes[status if status in ("ok", "split") else f"{status}: {what}"] += 1
            if status in ("ok", "split"):
                problems += check_row(name, spec, source, status, payload)
                split_examples += len(payload.examples) if status == "split" else 0
        print(f"{name} × {dataset}: {dict(outcomes)}, {split_examples} examples from split rows")
        assert not problems, f"{len(problems)} trained turns are not as generated:\n" + "\n".join(
            problems[:5]
        )
        trained = outcomes["ok"] + outcomes["split"]
        assert trained >= 0.95 * len(rows), dict(outcomes)
        assert (outcomes["ok"], outcomes["split"], split_examples) == EXPECTED[(name, dataset)], dict(
            outcomes
        )


# ---------------------------------------------------------------- terminators


def test_turn_terminators_are_probed_per_situation() -> None:
    """Harmony writes <|return|> after a last answer, <|end|> after one in history and <|call|> after a tool call;
    generation stops on <|return|> and <|call|> only. ChatML writes <|im_end|> everywhere."""
    harmony = TemplateInfo.probe(family_tokenizer("gptoss"), HARMONY.read_text(encoding="utf-8"))
    assert harmony.end_of_turn == ("<|return|>", "<|end|>", "<|call|>")
    assert harmony.stop_tokens == ("<|return|>", "<|call|>")
    assert harmony.generation_prompt == "<|start|>assistant"
    chatml = TemplateInfo.probe(family_tokenizer("chatml"), DEFAULT_CHAT_TEMPLATE)
    assert (chatml.end_of_turn, chatml.stop_tokens) == (("<|im_end|>",), ("<|im_end|>",))


def test_the_tokenizer_bundle_stops_generation_on_the_stop_tokens() -> None:
    from sftforge.model.load import TokenizerBundle

    tok = family_tokenizer("gptoss")
    bundle = TokenizerBundle(tok, TemplateInfo.probe(tok, HARMONY.read_text(encoding="utf-8")), "harmony", [])
    assert bundle.end_of_turn == ["<|return|>", "<|call|>"]
    assert bundle.end_of_turn_ids == tok.convert_tokens_to_ids(["<|return|>", "<|call|>"])


# ---------------------------------------------------------------- multi_turn


MULTI = row(
    msg("system", "Be brief."),
    msg("user", "Q1"),
    msg("assistant", "A1", reasoning_content="R1"),
    msg("user", "Q2"),
    msg("assistant", "A2", reasoning_content="R2"),
)


def outcome(spec: TokenizeSpec, source: SourceRow) -> tuple[str, list[tuple[str, list[str]]]]:
    """(status, [(source, trained runs)] per example) — or (status: reason, []) for a refusal."""
    status, what, payload = process_row(spec, source)
    if status not in ("ok", "split"):
        return f"{status}: {what}", []
    tok = spec.tokenizer
    return status, [
        (e.source, trained_runs(tok, e.input_ids, e.labels)) for e, _ in examples_of(status, payload)
    ]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_auto_splits_a_row_whose_earlier_turns_the_template_rewrites(name: str) -> None:
    status, examples = outcome(spec_for(name), MULTI)
    assert status == "split"
    assert [source for source, _ in examples] == ["t.jsonl:1#turn2", "t.jsonl:1#turn4"]
    conv = to_conversation(MULTI.row)
    assert [runs for _, runs in examples] == [[completion(name, conv.messages[i])] for i in (2, 4)]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_auto_keeps_a_row_whole_when_every_turn_reads_as_generated(name: str) -> None:
    single = row(msg("user", "Q1"), msg("assistant", "A1", reasoning_content="R1"))
    assert outcome(spec_for(name), single)[0] == "ok"
    # last_assistant trains only the last turn, which the whole render shows as generated: no split
    status, examples = outcome(spec_for(name, train_on="last_assistant"), MULTI)
    assert status == "ok" and examples[0][1] == [completion(name, to_conversation(MULTI.row).messages[4])]
    # train_on: all trains every token of the one render
    assert outcome(spec_for(name, train_on="all"), MULTI)[0] == "ok"


def test_auto_keeps_prefix_preserving_templates_whole() -> None:
    spec = TokenizeSpec.build(family_tokenizer("chatml"), DEFAULT_CHAT_TEMPLATE, 1 << 20)
    assert outcome(spec, MULTI) == ("ok", [("t.jsonl:1", ["<think>\nR1\n</think>\n\nA1<|im_end|>",
                                                          "<think>\nR2\n</think>\n\nA2<|im_end|>"])])  # fmt: skip


def test_whole_refuses_an_answer_that_ends_unlike_a_generation() -> None:
    """Harmony ends an answer in history with <|end|>: trained so, the model would never learn to stop."""
    status, what, message = process_row(spec_for("harmony", "whole"), MULTI)
    assert (status, what) == ("bad", "end_of_turn_missing")
    assert "<|end|>" in message and "<|return|>" in message and "multi_turn" in message


def test_whole_keeps_todays_qwen3_masks() -> None:
    """`whole` is the behaviour before `multi_turn` existed: Qwen3's earlier turn is trained as the whole
    render shows it, without its reasoning."""
    status, examples = outcome(spec_for("qwen3", "whole"), MULTI)
    assert status == "ok"
    assert examples[0][1] == ["A1<|im_end|>", "<think>\nR2\n</think>\n\nA2<|im_end|>"]


def test_split_makes_one_example_per_turn_even_for_a_faithful_template() -> None:
    tok = family_tokenizer("chatml")
    spec = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, 1 << 20, multi_turn="split")
    status, _, payload = process_row(spec, MULTI)
    assert status == "split" and payload.reason == "forced"
    messages = to_conversation(MULTI.row).template_messages()
    for (example, _), upto in zip(payload.examples, (3, 5), strict=True):
        # for a template that keeps history as it is, each example is exactly the render up to its turn
        rendered = tok.apply_chat_template(
            messages[:upto], chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False
        )
        assert tok.decode(example.input_ids, skip_special_tokens=False) == rendered
        assert len(trained_runs(tok, example.input_ids, example.labels)) == 1


@pytest.mark.parametrize(
    ("name", "answers"),
    [
        ("harmony", ["<|channel|>final<|message|>A1<|return|>", "<|channel|>final<|message|>A2<|return|>"]),
        ("qwen3", ["A1<|im_end|>", "A2<|im_end|>"]),
    ],
)
def test_split_without_training_the_reasoning(name: str, answers: list[str]) -> None:
    status, examples = outcome(spec_for(name, train_on_reasoning=False), MULTI)
    assert status == "split" and [runs for _, runs in examples] == [[a] for a in answers]


def test_split_tool_call_turn_keeps_its_analysis_and_stops_on_call() -> None:
    """A Harmony tool-call turn is rendered with its analysis when it is the last message (inference), and that
    analysis is dropped from the history once a final answer follows."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    source = row(
        msg("user", "Weather in Paris?"),
        msg("assistant", "", tool_calls=[call], reasoning_content="I need the weather tool."),
        msg("tool", "sunny"),
        msg("assistant", "Sunny.", reasoning_content="The tool says sunny."),
        tools=[EDGE_CASES["tool_calls"]["tools"][0]],
    )
    spec = spec_for("harmony")
    status, _, payload = process_row(spec, source)
    assert status == "split"
    tok = spec.tokenizer
    (first, _), (second, _) = payload.examples
    assert trained_runs(tok, first.input_ids, first.labels) == [
        "<|channel|>analysis<|message|>I need the weather tool.<|end|><|start|>assistant to=functions.get_weather"
        '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
    ]
    # the answer's example starts with exactly what inference sends: the tool call with its analysis
    prompt = tok.decode(second.input_ids[: second.labels.index(next(x for x in second.labels if x != -100))])
    assert "I need the weather tool." in prompt and prompt.endswith("<|start|>assistant")


def test_split_examples_are_truncated_by_rounds() -> None:
    """`truncation: turns` works on each split example: it drops its earliest rounds, keeps the system prompt and
    never cuts its own turn."""
    long_row = row(
        msg("system", "Be brief."),
        *[
            m
            for k in range(4)
            for m in (
                msg("user", f"Question {k} " + "word " * 40),
                msg("assistant", f"A{k}", reasoning_content=f"R{k}"),
            )
        ],  # fmt: skip
    )
    full = spec_for("qwen3")
    lengths = [len(e.input_ids) for e, _ in examples_of(*process_row(full, long_row)[::2])]
    short = spec_for("qwen3", max_length=lengths[1] + 5)
    status, _, payload = process_row(short, long_row)
    assert status == "split"
    tok = short.tokenizer
    kept = [(e, t) for e, t in payload.examples]
    assert [e.source.split("#")[1] for e, _ in kept] == ["turn2", "turn4", "turn6", "turn8"]
    assert [t.truncated for _, t in kept] == [False, False, True, True]
    for (example, _), k in zip(kept, range(4), strict=True):
        text = tok.decode(example.input_ids, skip_special_tokens=False)
        assert len(example.input_ids) <= short.max_length and text.startswith("<|im_start|>system\nBe brief.")
        assert trained_runs(tok, example.input_ids, example.labels) == [
            f"<think>\nR{k}\n</think>\n\nA{k}<|im_end|>"
        ]


def test_split_trains_a_flagged_user_message_once() -> None:
    source = row(
        msg("user", "Q1"),
        msg("assistant", "A1", reasoning_content="R1"),
        msg("user", "KEEP THIS", train=True),
        msg("assistant", "A2", reasoning_content="R2"),
    )
    status, examples = outcome(spec_for("qwen3"), source)
    assert status == "split"
    trained = [run for _, runs in examples for run in runs]
    assert sum("KEEP THIS" in run for run in trained) == 1
    assert "KEEP THIS" in "".join(examples[1][1]) and "KEEP THIS" not in "".join(examples[0][1])
    after_last = row(msg("user", "Q1"), msg("assistant", "A1"), msg("user", "dangling", train=True))
    assert outcome(spec_for("qwen3", "split"), after_last)[0] == "bad: cannot_locate_message"


def test_a_split_row_is_counted_and_reported() -> None:
    from types import SimpleNamespace

    from sftforge.train.summary import data_summary_lines

    rows = [MULTI, row(msg("user", "Q"), msg("assistant", "A"))]
    examples, stats = build_examples(rows, spec_for("harmony"), "error", 1, "test")
    assert (stats.rows, stats.kept, len(examples)) == (2, 2, 3)
    assert (stats.split_rows, stats.split_examples) == (Counter(rewritten=1), 2)
    assert [e.source for e in examples] == ["t.jsonl:1#turn2", "t.jsonl:1#turn4", "t.jsonl:1"]
    cfg = SimpleNamespace(data=SimpleNamespace(multi_turn="auto", train_on="all_assistant", train_on_reasoning=True,
                                               max_length=1024, truncation="turns"))  # fmt: skip
    data = SimpleNamespace(train_stats=stats, train=examples, eval=[])
    lines = data_summary_lines(cfg, data)
    assert lines[0].startswith(
        " decision     multi_turn auto: 1 of 2 rows split into 2 examples, one per trained"
    )
    assert "renders earlier turns differently" in lines[0]


def test_tokenize_row_is_the_one_row_reference() -> None:
    spec = spec_for("harmony")
    conv = to_conversation(MULTI.row, source=MULTI.source)
    out = tokenize_row(conv, spec)
    assert out.split is not None and out.turns == [2, 4]
    _, _, payload = process_row(spec, MULTI)
    assert [t.input_ids for t in out.examples] == [e.input_ids for e, _ in payload.examples]


def test_conversation_helpers_keep_messages() -> None:
    """A split example reuses the row's Message objects (the batched path keys encodings by them)."""
    from sftforge.data.turns import Split, split_units

    conv = Conversation([Message("user", "Q"), Message("assistant", "A"), Message("user", "Q2"),
                         Message("assistant", "A2")], source="s")  # fmt: skip
    units = split_units(conv, Split("forced", (1, 3)))
    assert [len(u.messages) for u in units] == [2, 4]
    assert all(a is b for u in units for a, b in zip(u.messages, conv.messages, strict=False))
    assert [u.meta["split_turn"] for u in units] == [1, 3] and "split_turn" not in conv.meta

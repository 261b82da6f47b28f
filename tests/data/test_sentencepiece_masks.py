"""SentencePiece tokenizers (Llama 2 / Mistral v0.1 style, both pipelines checkpoints ship) on their own chat
templates and real data: no row refused by the masking, the trained ids are the whole text's (what inference sees),
and every trained turn is its content plus the end-of-turn token.

The tokenizers are real SentencePiece-style BPEs (`train_sentencepiece_tokenizer`: "▁" words, byte fallback), not
byte-level stand-ins: a word's "▁" and byte-fallback characters are where tokenizing the text piece by piece at the
span edges went wrong (every row refused with the legacy pipeline; with Metaspace, answers starting with a "▁" token
that inference never produces after `[/INST]`).
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from tokenizer_families import EDGE_CASES, family_tokenizer

from sftforge.data.formats import to_conversation
from sftforge.data.masking import IGNORE_INDEX, Tokenized
from sftforge.data.pipeline import TokenizeSpec, process_rows, tokenize_conversation
from sftforge.data.readers import SourceRow, iter_rows
from sftforge.testing import LLAMA2_CHAT_TEMPLATE

SHARED_TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"

FAMILY = {"legacy": "llama2-legacy", "metaspace": "llama2"}  # the same vocabulary, both pipelines
# What each template writes after an assistant's (trimmed) content: the trained run ends with it. The fixture files
# as they are (rendered with trim_blocks/lstrip_blocks, their indentation stays) and stripped as their README says;
# "llama2-official" is Llama 2 chat's published template.
TEMPLATES = {
    "llama-2-chat.jinja": " </s>",
    "llama-2-chat.jinja:stripped": " </s>",
    "llama2-official": " </s>",
    "mistral-instruct.jinja": "</s>",
    "mistral-instruct.jinja:stripped": "</s>",
}
# Mistral v0.1's shape, where the answer follows `[/INST]` with no space: its first word carries no "▁" in the
# whole text, so a piece tokenized alone (with a "▁") is a token inference never produces there.
GLUED = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
DATASETS = {
    "alpaca_en": "alpaca_en_demo.json",
    "alpaca_zh": "alpaca_zh_demo.json",
    "glaive": "glaive_toolcall_en_demo.json",
}
GLAIVE_TOOL_ROWS = (
    153  # function_call/observation turns, which these templates refuse to render (template_error)
)


@pytest.fixture(scope="module")
def templates_dir() -> Path:
    if not SHARED_TEMPLATES.is_dir():
        pytest.skip(f"../shared is absent: real chat templates not found at {SHARED_TEMPLATES}")
    return SHARED_TEMPLATES


def template_text(template: str) -> str:
    if template in ("glued", "llama2-official"):
        return GLUED if template == "glued" else LLAMA2_CHAT_TEMPLATE
    name, _, how = template.partition(":")
    text = (SHARED_TEMPLATES / name).read_text(encoding="utf-8")
    return text.replace("    ", "").replace("\n", "") if how == "stripped" else text


@cache
def spec_for(template: str, variant: str) -> TokenizeSpec:
    return TokenizeSpec.build(family_tokenizer(FAMILY[variant]), template_text(template), max_length=1 << 20)


@cache
def rows_of(shared_data: Path, dataset: str) -> tuple[SourceRow, ...]:
    return tuple(iter_rows(shared_data / DATASETS[dataset]))


def runs(labels: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for k, label in enumerate(labels):
        if label != IGNORE_INDEX:
            if groups and groups[-1][-1] == k - 1:
                groups[-1].append(k)
            else:
                groups.append([k])
    return groups


def problems_of(spec: TokenizeSpec, row: SourceRow, out: Tokenized, end: str) -> list[str]:
    """What is wrong with a trained example, read from the conversation, the template and the tokenizer alone."""
    tok, problems = spec.tokenizer, []
    conv = to_conversation(row.row, source=row.source)
    messages = conv.template_messages()
    rendered = tok.apply_chat_template(messages, chat_template=spec.template.text, tokenize=False)
    if out.input_ids != tok(rendered, add_special_tokens=False)["input_ids"]:
        problems.append("input ids are not the whole rendered text's")
    if any(label not in (IGNORE_INDEX, i) for i, label in zip(out.input_ids, out.labels, strict=True)):
        problems.append("labels are not a masked copy of the ids")
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    texts = [tok.decode([out.input_ids[k] for k in run]) for run in runs(out.labels)]
    if len(texts) != len(answers):
        return [*problems, f"{len(texts)} trained runs for {len(answers)} assistant turns"]
    for answer, text in zip(answers, texts, strict=True):
        # Whitespace before the answer is the only extra a run may hold: the first word's "▁" (the whole text's
        # tokenization) or what the template writes before the answer (the fixture files' indentation).
        if text.lstrip() != answer.strip() + end:
            problems.append(f"trained run {text[:60]!r}… is not the answer {answer[:40]!r}… + {end!r}")
    context = [
        m.content.strip() for m in conv.messages if m.role != "assistant" and len(m.content.strip()) > 8
    ]
    if any(c in t for c in context for t in texts if not any(c in a for a in answers)):
        problems.append("a system/user turn's content is trained")
    last_prompt = messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
    prompt = tok.apply_chat_template(
        last_prompt, chat_template=spec.template.text, add_generation_prompt=True, return_dict=False
    )
    if out.input_ids[: len(prompt)] != list(prompt):
        problems.append("the inference prompt's ids are not a prefix of the trained ids")
    return problems


@pytest.mark.needs_shared
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("variant", list(FAMILY))
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_real_data_is_trained_as_inference_sees_it(
    shared_data: Path, templates_dir: Path, template: str, variant: str, dataset: str
) -> None:
    spec = spec_for(template, variant)
    rows = rows_of(shared_data, dataset)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for row, (status, what, payload) in zip(rows, process_rows(spec, list(rows)), strict=True):
        if status != "ok":
            counts[f"{status}: {what}"] += 1
            if what == "template_error" and "Conversation roles must alternate" not in payload:
                failures.append(f"{row.source}: unexpected template error {payload}")
            continue
        counts["trained"] += 1
        failures += [f"{row.source}: {p}" for p in problems_of(spec, row, payload[1], TEMPLATES[template])]
    print(f"{template} × {variant} × {dataset}: {dict(counts)}")
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures[:5])
    # Refused only where the template itself raises (tool turns break its user/assistant alternation).
    refused = {"bad: template_error": GLAIVE_TOOL_ROWS} if dataset == "glaive" else {}
    assert dict(counts) == {**refused, "trained": len(rows) - sum(refused.values())}


@pytest.mark.parametrize("variant", list(FAMILY))
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_chinese_emoji_and_multi_turn_edge_cases(templates_dir: Path, template: str, variant: str) -> None:
    spec = spec_for(template, variant)
    emoji = {
        "messages": [
            {"role": "user", "content": "表情？👋🏽"},
            {"role": "assistant", "content": "好的 👍🏽🇨🇳 done"},
        ]
    }
    cases = {
        name: EDGE_CASES[name] for name in ("multi_turn", "chinese_emoji", "answer_spaced", "answer_dot")
    }
    for name, row in {**cases, "emoji": emoji}.items():
        source = SourceRow(row, f"edge:{name}")
        ((status, what, payload),) = process_rows(spec, [source])
        assert status == "ok", (name, what, payload)
        assert problems_of(spec, source, payload[1], TEMPLATES[template]) == [], name
    ((_, _, (_, out)),) = process_rows(spec, [SourceRow(emoji, "edge:emoji")])
    trained = spec.tokenizer.convert_ids_to_tokens([i for i in out.labels if i != IGNORE_INDEX])
    assert {"<0xF0>", "<0x9F>"} <= set(trained)  # byte-fallback tokens of the emoji are trained


@pytest.mark.parametrize("variant", list(FAMILY))
def test_answer_glued_to_the_prompt_is_tokenized_as_inference_sees_it(variant: str) -> None:
    """`[/INST]Hello`: inference tokenizes the prompt and then generates `H`…, never `▁H`…; the trained ids are
    those of the whole text, and the prompt's ids are their prefix."""
    spec = spec_for("glued", variant)
    tok = spec.tokenizer
    messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there."}]
    conv = to_conversation({"messages": messages})
    out = tokenize_conversation(conv, tok, spec.template)
    text = tok.apply_chat_template(messages, chat_template=GLUED, tokenize=False)
    assert text.endswith("[/INST]Hello there.</s>")
    assert out.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    prompt = tok.apply_chat_template(
        messages[:1], chat_template=GLUED, add_generation_prompt=True, return_dict=False
    )
    assert out.input_ids[: len(prompt)] == list(prompt)
    ((first, *_),) = runs(out.labels)
    assert first == len(prompt) and not tok.convert_ids_to_tokens(out.input_ids[first]).startswith("▁")
    assert tok.decode(out.input_ids[first:]) == "Hello there.</s>"


def test_the_check_catches_piecewise_ids(shared_data: Path, templates_dir: Path) -> None:
    """The checks above are not vacuous: ids tokenized piece by piece at the span edges (the old way) fail them."""
    spec = spec_for("llama-2-chat.jinja", "metaspace")
    tok = spec.tokenizer
    row = rows_of(shared_data, "alpaca_en")[0]
    ((_, _, (_, out)),) = process_rows(spec, [row])
    assert problems_of(spec, row, out, " </s>") == []
    conv = to_conversation(row.row, source=row.source)
    text = tok.apply_chat_template(conv.template_messages(), chat_template=spec.template.text, tokenize=False)
    answer_start = text.index(conv.messages[-1].content.strip()[:20])
    pieces = [text[:answer_start], text[answer_start:]]
    piecewise = [i for piece in pieces for i in tok(piece, add_special_tokens=False)["input_ids"]]
    head = len(tok(pieces[0], add_special_tokens=False)["input_ids"])
    labels = [IGNORE_INDEX] * head + piecewise[head:]
    assert "input ids are not the whole rendered text's" in problems_of(
        spec, row, Tokenized(piecewise, labels), " </s>"
    )

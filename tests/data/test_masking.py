"""Masking: exactly the assistant turns (content + end-of-turn token) are trained, whatever the template."""

from __future__ import annotations

import copy
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from sftforge.data.collate import PaddingCollator
from sftforge.data.conversation import Conversation, Message
from sftforge.data.masking import (
    IGNORE_INDEX,
    MaskOptions,
    Tokenized,
    tokenize_with_spans,
    trained_char_spans,
)
from sftforge.data.pipeline import tokenize_conversation
from sftforge.data.spans import render_conversation
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, TemplateInfo, end_of_turn_markers
from sftforge.errors import RowError
from sftforge.testing import default_corpus, train_bpe_tokenizer

TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"
IM_END = "<|im_end|>"
HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def bpe() -> Any:
    """A fresh tiny tokenizer to deep-copy and extend with another family's special tokens."""
    return train_bpe_tokenizer(default_corpus(), vocab_size=1024)


@pytest.fixture(scope="module")
def templates_dir() -> Path:
    if not TEMPLATES.is_dir():
        pytest.skip(f"../shared is absent: real chat templates not found at {TEMPLATES}")
    return TEMPLATES


def conv(*turns: tuple[str, str] | Message, tools: list[dict] | None = None) -> Conversation:
    msgs = [t if isinstance(t, Message) else Message(*t) for t in turns]
    return Conversation(msgs, tools=tools, source="test.jsonl:1", format="messages")


def spans_of(tok: Any, c: Conversation, template: str = DEFAULT_CHAT_TEMPLATE) -> tuple[str, list]:
    rendered = render_conversation(c, tok, TemplateInfo.probe(tok, template))
    return rendered.text, trained_char_spans(c, rendered, MaskOptions())


def tokenize(tok: Any, c: Conversation, template: str = DEFAULT_CHAT_TEMPLATE, max_length: int = 4096):
    return tokenize_conversation(c, tok, template, max_length, truncation="right")


def runs(out: Tokenized) -> list[list[int]]:
    """Positions of the trained tokens, grouped into maximal consecutive runs."""
    groups: list[list[int]] = []
    for k, label in enumerate(out.labels):
        if label == IGNORE_INDEX:
            continue
        if groups and groups[-1][-1] == k - 1:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def run_texts(tok: Any, out: Tokenized) -> list[str]:
    return [tok.decode([out.input_ids[k] for k in run], skip_special_tokens=False) for run in runs(out)]


def trained_text(tok: Any, out: Tokenized) -> str:
    return "".join(run_texts(tok, out))


def check_labels_copy_ids(out: Tokenized) -> None:
    assert len(out.labels) == len(out.input_ids)
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(out.input_ids, out.labels, strict=True))


def ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_ids(tok: Any, messages: list[dict], template: str, **kwargs: Any) -> list[int]:
    out = tok.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=False, **kwargs
    )
    return list(out)


# --- assistant_char_spans / tokenize_with_spans ---------------------------------------------------------------


def test_single_turn_trains_content_and_end_of_turn_only(tok: Any) -> None:
    c = conv(("user", "What is 2 + 2?"), ("assistant", "2 + 2 = 4."))
    text, spans = spans_of(tok, c)
    assert text == tok.apply_chat_template(
        c.template_messages(), chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False
    )
    assert len(spans) == 1
    start, end = spans[0]
    assert text[start:end] == "2 + 2 = 4." + IM_END
    assert text[:start].endswith(HEADER) and text[end:] == "\n"

    out = tokenize_with_spans(tok, text, spans)
    check_labels_copy_ids(out)
    im_end = tok.convert_tokens_to_ids(IM_END)
    # Exactly the content's tokens plus <|im_end|>, all at the end except the final "\n".
    assert [i for i, label in zip(out.input_ids, out.labels, strict=True) if label != IGNORE_INDEX] == [
        *ids(tok, "2 + 2 = 4."),
        im_end,
    ]
    assert out.labels[-1] == IGNORE_INDEX and out.input_ids[-1] == ids(tok, "\n")[0]
    # Training ids are what the template tokenizes to, and the generation prompt's ids are a prefix of them,
    # ending right where training starts.
    assert out.input_ids == chat_ids(tok, c.template_messages(), DEFAULT_CHAT_TEMPLATE)
    prompt = chat_ids(tok, c.template_messages()[:1], DEFAULT_CHAT_TEMPLATE, add_generation_prompt=True)
    assert out.input_ids[: len(prompt)] == prompt
    assert runs(out)[0][0] == len(prompt)
    assert all(label == IGNORE_INDEX for label in out.labels[: len(prompt)])


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_multi_turn_every_assistant_turn_trained_with_im_end_but_not_the_newline(tok: Any, system) -> None:
    turns = [("user", "Hi!"), ("assistant", "Hello."), ("user", "And then?"), ("assistant", "Then this.")]
    turns += [("user", "Last one"), ("assistant", "Done, bye.")]
    c = conv(*([("system", system)] if system else []), *turns)
    text, spans = spans_of(tok, c)
    if system:
        assert text.startswith(f"<|im_start|>system\n{system}{IM_END}\n")
    else:
        assert text.startswith("<|im_start|>user\nHi!")
    assert [text[s:e] for s, e in spans] == ["Hello." + IM_END, "Then this." + IM_END, "Done, bye." + IM_END]
    assert all(text[e] == "\n" for _, e in spans)

    out = tokenize_with_spans(tok, text, spans)
    check_labels_copy_ids(out)
    assert run_texts(tok, out) == ["Hello." + IM_END, "Then this." + IM_END, "Done, bye." + IM_END]
    im_end, newline = tok.convert_tokens_to_ids(IM_END), ids(tok, "\n")[0]
    for run in runs(out):
        after = run[-1] + 1
        assert out.input_ids[run[-1]] == im_end
        assert out.input_ids[after] == newline and out.labels[after] == IGNORE_INDEX
    # Every turn ends with <|im_end|>, but only the assistant ones are trained.
    assert out.input_ids.count(im_end) == len(c.messages)
    assert out.labels.count(im_end) == 3
    trained = trained_text(tok, out)
    for m in c.messages:
        if m.role != "assistant":
            assert m.content not in trained


def test_train_false_turn_is_not_trained(tok: Any) -> None:
    c = conv(
        ("user", "One"),
        Message("assistant", "Skipped answer.", train=False),
        ("user", "Two"),
        Message("assistant", "Trained answer.", train=True),
        ("user", "Three"),
        ("assistant", "Default answer."),  # train=None follows the policy: trained
    )
    text, spans = spans_of(tok, c)
    assert [text[s:e] for s, e in spans] == ["Trained answer." + IM_END, "Default answer." + IM_END]
    out = tokenize_with_spans(tok, text, spans)
    assert run_texts(tok, out) == ["Trained answer." + IM_END, "Default answer." + IM_END]
    assert "Skipped" in tok.decode(out.input_ids)  # still in the input, as context

    nothing = conv(("user", "One"), Message("assistant", "No.", train=False))
    assert spans_of(tok, nothing)[1] == []
    with pytest.raises(RowError) as err:
        tokenize(tok, nothing)
    assert err.value.reason == "no_trainable_tokens"


def test_tool_calls_and_reasoning_are_inside_the_assistant_span(tok: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    c = conv(
        ("system", "Be brief."),
        ("user", "Weather in Paris?"),
        Message("assistant", "", reasoning="The user needs get_weather.", tool_calls=[call]),
        Message("tool", '{"sky": "sunny"}', name="get_weather"),
        ("assistant", "It is sunny."),
        tools=tools,
    )
    text, spans = spans_of(tok, c)
    first = (
        "<think>\nThe user needs get_weather.\n</think>\n\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' + IM_END
    )
    assert [text[s:e] for s, e in spans] == [first, "It is sunny." + IM_END]
    assert "# Tools" in text[: spans[0][0]]  # the tool schemas are rendered, in the system turn

    out = tokenize_with_spans(tok, text, spans)
    check_labels_copy_ids(out)
    assert run_texts(tok, out) == [first, "It is sunny." + IM_END]
    trained_ids = [i for i, label in zip(out.input_ids, out.labels, strict=True) if label != IGNORE_INDEX]
    for marker in ("<think>", "</think>", "<tool_call>", "</tool_call>"):  # single tokens, trained
        assert trained_ids.count(tok.convert_tokens_to_ids(marker)) == 1
    trained = trained_text(tok, out)
    assert '"sky"' not in trained and "# Tools" not in trained and "Be brief." not in trained


def test_template_like_strings_in_content_do_not_move_the_mask(tok: Any) -> None:
    """Content that looks like template markup is masked by position, never by searching for markers."""
    user = "Ignore this: <|im_start|>assistant\nI am a fake answer<|im_end|>\n<|im_start|>user\nok?"
    answer = "Here is ChatML: <|im_start|>user\nnot a real user turn<|im_end|>\nthe real end"
    c = conv(
        ("user", user), ("assistant", answer), ("user", "<|im_start|>assistant\n"), ("assistant", "Fine.")
    )
    text, spans = spans_of(tok, c)
    assert [text[s:e] for s, e in spans] == [answer + IM_END, "Fine." + IM_END]

    out = tokenize_with_spans(tok, text, spans)
    check_labels_copy_ids(out)
    assert run_texts(tok, out) == [answer + IM_END, "Fine." + IM_END]
    assert "I am a fake answer" not in trained_text(tok, out)
    # The markup inside content is tokenized like the template's own (it is the same text); the mask is unaffected:
    # the turn's last <|im_end|> is the end of turn, the one inside the answer is just trained content.
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert [out.input_ids[k] for k in runs(out)[0]].count(im_end) == 2
    assert tokenize(tok, c).input_ids == out.input_ids


def test_chinese_and_emoji_content(tok: Any) -> None:
    answer = "你好，世界！我们今天学习机器学习。😀👍🏽 café 🇫🇷\t(完)"
    c = conv(("system", "你是一个乐于助人的助手。"), ("user", "请用中文回答 🙂"), ("assistant", answer))
    out = tokenize(tok, c)
    check_labels_copy_ids(out)
    assert run_texts(tok, out) == [answer + IM_END]
    assert len(runs(out)[0]) == len(ids(tok, answer)) + 1


def test_decomposed_unicode_content_is_trained(tok: Any) -> None:
    answer = (
        "Cafe\u0301 and Nguye\u0302\u0303n"  # NFD: combining accents, as some editors and macOS write them
    )
    out = tokenize(tok, conv(("user", "Spell it."), ("assistant", answer)))
    assert run_texts(tok, out) == [unicodedata.normalize("NFC", answer) + IM_END]


def test_content_starting_with_newline_is_never_mistrained(tok: Any) -> None:
    """ "\\n" after the header and the content's leading "\\n" merge into one token that crosses the turn
    boundary. It must either be refused (mask_mismatch) or trained as the whole content; never half-trained.
    The ids are the whole text's (what inference sees), so the merged "\\n\\n" token is trained: it produces the
    content's first character, and what it brings from the header is whitespace (the documented straddle)."""
    c = conv(("user", "Code?"), ("assistant", "\nprint(1)"))
    out = tokenize(tok, c)
    text = tok.apply_chat_template(c.template_messages(), chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False)
    assert out.input_ids == ids(tok, text)
    assert run_texts(tok, out) == ["\n\nprint(1)" + IM_END]
    first = runs(out)[0][0]
    assert tok.decode(out.input_ids[first : first + 1]) == "\n\n"  # the one token across the turn's start
    assert tok.decode(out.input_ids[:first]).endswith(HEADER[:-1])  # the prompt before it, untrained


def test_trailing_and_inner_whitespace_is_trained_as_is(tok: Any) -> None:
    answer = "  two leading spaces, a tab\tand a trailing newline\n"
    out = tokenize(tok, conv(("user", "ws"), ("assistant", answer)))
    assert run_texts(tok, out) == [answer + IM_END]


# --- tokenize_conversation: truncation, text rows, pad/eos, BOS ---------------------------------------------------


def test_truncation_keeps_a_prefix_and_flags_it(tok: Any) -> None:
    c = conv(
        ("user", "Tell me a story about the sea."),
        ("assistant", "Once upon a time the sea was calm and blue."),
    )
    full = tokenize(tok, c)
    assert not full.truncated
    first_trained = runs(full)[0][0]
    n = len(full.input_ids)

    assert tokenize(tok, c, max_length=n) == full  # exactly max_length: not truncated

    cut = tokenize(tok, c, max_length=n - 3)
    assert cut.truncated and len(cut.input_ids) == n - 3
    assert cut.input_ids == full.input_ids[: n - 3] and cut.labels == full.labels[: n - 3]
    assert cut.num_trained == full.num_trained - 2  # the last 3 tokens: "." ,<|im_end|> trained; "\n" not

    one = tokenize(tok, c, max_length=first_trained + 1)
    assert one.truncated and one.num_trained == 1

    for max_length in (first_trained, 3):
        with pytest.raises(RowError) as err:
            tokenize(tok, c, max_length=max_length)
        assert err.value.reason == "no_trainable_tokens_after_truncation"
        assert f"max_length={max_length}" in err.value.detail


def test_text_rows_train_every_token_and_end_with_eos(tok: Any) -> None:
    c = Conversation([], source="c4.jsonl:1", format="text", meta={"text": "Plain web text."})
    out = tokenize_conversation(c, tok, DEFAULT_CHAT_TEMPLATE, 4096, truncation="right")
    assert out.input_ids == [*ids(tok, "Plain web text."), tok.eos_token_id]
    assert out.labels == out.input_ids


def test_end_of_turn_is_trained_even_when_it_is_the_pad_token(tok: Any) -> None:
    same = copy.deepcopy(tok)
    same.pad_token = IM_END
    im_end = same.convert_tokens_to_ids(IM_END)
    assert same.pad_token_id == same.eos_token_id == im_end

    short = tokenize(same, conv(("user", "Hi"), ("assistant", "Yo.")))
    long = tokenize(
        same, conv(("user", "Hi"), ("assistant", "Hello."), ("user", "More"), ("assistant", "Sure."))
    )
    assert short == tokenize(tok, conv(("user", "Hi"), ("assistant", "Yo.")))  # the pad token changes nothing
    assert short.labels.count(im_end) == 1 and long.labels.count(im_end) == 2

    batch = PaddingCollator(pad_token_id=same.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)]
    )
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (batch["input_ids"][0, len(short.input_ids) :] == im_end).all()  # padded with <|im_end|> itself
    assert (labels[0, len(short.input_ids) :] == IGNORE_INDEX).all() and (
        mask[0, len(short.input_ids) :] == 0
    ).all()
    assert labels[0, : len(short.input_ids)].tolist() == short.labels
    assert labels[1].tolist() == long.labels
    assert int((labels == im_end).sum()) == 3


def family_tokenizer(bpe: Any, bos: str | None, eos: str, specials: list[str], add_bos: bool = False) -> Any:
    t = copy.deepcopy(bpe)
    tokens: dict[str, Any] = {"eos_token": eos, "additional_special_tokens": specials}
    if bos:
        tokens["bos_token"] = bos
    t.add_special_tokens(tokens)
    if add_bos:
        t.add_bos_token = True  # like Llama/Mistral: a plain tokenizer(text) call prepends BOS
    return t


def chujiezheng(path: Path) -> str:
    """Templates from chujiezheng/chat_templates are indented for reading; their README strips them like this."""
    return path.read_text(encoding="utf-8").replace("    ", "").replace("\n", "")


@pytest.mark.parametrize(
    ("name", "bos", "specials"),
    [
        ("llama-3-instruct", "<|begin_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
        ("mistral-instruct", "<s>", []),
    ],
)
def test_bos_is_never_doubled(
    bpe: Any, templates_dir: Path, name: str, bos: str, specials: list[str]
) -> None:
    eos = "<|eot_id|>" if "<|eot_id|>" in specials else "</s>"
    t = family_tokenizer(bpe, bos, eos, specials, add_bos=True)
    bos_id = t.convert_tokens_to_ids(bos)
    assert t("x")["input_ids"][0] == bos_id  # the tokenizer would add one...
    template = chujiezheng(templates_dir / f"{name}.jinja")
    c = conv(("user", "Hi"), ("assistant", "Hello."), ("user", "Again"), ("assistant", "Bye."))
    text = render_conversation(c, t, TemplateInfo.probe(t, template)).text
    assert text.startswith(bos)  # ...and the template writes one too
    assert t(text)["input_ids"].count(bos_id) == 2  # what naive tokenization of the rendering gives

    out = tokenize_conversation(c, t, template, 4096, truncation="right")
    assert out.input_ids.count(bos_id) == 1 and out.input_ids[0] == bos_id
    assert out.labels[0] == IGNORE_INDEX
    assert out.input_ids == chat_ids(t, c.template_messages(), template)


# --- real templates: end-of-turn detection and golden masks ---------------------------------------------------

# name, strip (chujiezheng indentation), bos, eos, additional special tokens, expected end-of-turn marker
FAMILIES = [
    ("chatml", True, "<s>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    ("qwen2.5-instruct", False, None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    (
        "llama-3-instruct",
        True,
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
        "<|eot_id|>",
    ),
    ("gemma-it", True, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
    ("mistral-instruct", True, "<s>", "</s>", [], "</s>"),
    ("llama-2-chat", True, "<s>", "</s>", [], "</s>"),
    (
        "phi-3",
        True,
        "<s>",
        "<|endoftext|>",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "<|end|>",
    ),
    ("zephyr", True, "<s>", "</s>", [], "</s>"),
    ("vicuna", True, "<s>", "</s>", [], "</s>"),
    ("alpaca", True, "<s>", "</s>", [], "</s>"),
]


@pytest.mark.parametrize(
    ("name", "strip", "bos", "eos", "specials", "marker"), FAMILIES, ids=[f[0] for f in FAMILIES]
)
@pytest.mark.parametrize("system", [None, "Be nice."], ids=["no-system", "system"])
def test_real_template_golden(
    bpe: Any, templates_dir: Path, name, strip, bos, eos, specials, marker, system
) -> None:
    t = family_tokenizer(bpe, bos, eos, specials)
    path = templates_dir / f"{name}.jinja"
    template = chujiezheng(path) if strip else path.read_text(encoding="utf-8")
    assert end_of_turn_markers(t, template) == [marker]

    answers = ["Hello friend.", "Sure, more of it."]
    turns = [("user", "Hi there"), ("assistant", answers[0]), ("user", "More?"), ("assistant", answers[1])]
    c = conv(*([("system", system)] if system else []), *turns)
    out = tokenize_conversation(c, t, template, 4096, truncation="right")
    check_labels_copy_ids(out)
    # Training ids are exactly the template's tokenization: no BOS beyond the ones it writes, which is one at
    # most, except for Llama 2 that opens every [INST] with one.
    assert out.input_ids == chat_ids(t, c.template_messages(), template)
    if bos:
        rendered = t.apply_chat_template(c.template_messages(), chat_template=template, tokenize=False)
        assert out.input_ids.count(t.convert_tokens_to_ids(bos)) == rendered.count(bos)
        assert rendered.count(bos) == (2 if name == "llama-2-chat" else int("bos_token" in template))
    # One trained run per assistant turn: its content (as the template spaces it) then the end-of-turn token.
    texts = run_texts(t, out)
    assert len(texts) == 2
    for got, answer in zip(texts, answers, strict=True):
        assert got.endswith(marker) and got[: -len(marker)].strip() == answer
    marker_id = t.convert_tokens_to_ids(marker)
    assert [out.input_ids[run[-1]] for run in runs(out)] == [marker_id, marker_id]
    trained = "".join(texts)
    assert all(m.content not in trained for m in c.messages if m.role != "assistant")
    # The prompt the server would send (up to the generation prompt) is a prefix of the training ids.
    prompt = chat_ids(t, c.template_messages()[:-1], template, add_generation_prompt=True)
    assert out.input_ids[: len(prompt)] == prompt
    assert runs(out)[-1][0] == len(prompt)  # and the last turn's training starts right after it


def test_end_of_turn_markers_default_template_and_none(tok: Any) -> None:
    assert end_of_turn_markers(tok, DEFAULT_CHAT_TEMPLATE) == [IM_END]
    plain = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    assert end_of_turn_markers(tok, plain) == []
    # With no marker the turn is trained up to its last non-space character, then the tokenizer's eos is
    # appended (and trained) so the model learns to stop.
    out = tokenize_conversation(
        conv(("user", "Hi"), ("assistant", "Hello there")), tok, plain, 4096, truncation="right"
    )
    assert run_texts(tok, out) == ["Hello there" + tok.eos_token]
    assert (
        tok.decode(out.input_ids, skip_special_tokens=False) == "user: Hi\nassistant: Hello there<|im_end|>\n"
    )


def test_template_without_end_marker_trains_content_ending_in_punctuation(tok: Any) -> None:
    plain = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    out = tokenize_conversation(
        conv(("user", "Hi"), ("assistant", "Hello.")), tok, plain, 4096, truncation="right"
    )
    assert run_texts(tok, out)[0].startswith("Hello.")


def test_template_that_rewrites_earlier_turns_is_masked_as_rendered(bpe: Any, templates_dir: Path) -> None:
    """TRL's Qwen3 template drops the <think> block of earlier assistant turns (not prefix-preserving): the
    sentinel method places each turn in the one full render, which is what gets trained."""
    template = (templates_dir / "trl" / "qwen3.jinja").read_text(encoding="utf-8")
    assert end_of_turn_markers(bpe, template) == [IM_END]
    single = conv(("user", "Q1"), Message("assistant", "A1", reasoning="Think first."))
    out = tokenize_conversation(single, bpe, template, 4096, truncation="right")
    assert run_texts(bpe, out) == ["<think>\nThink first.\n</think>\n\nA1" + IM_END]

    multi = conv(*single.messages, ("user", "Q2"), Message("assistant", "A2", reasoning="Again."))
    out = tokenize_conversation(multi, bpe, template, 4096, truncation="right")
    # Turn 1 is rendered without its reasoning once a later user turn follows; the last turn keeps it.
    assert run_texts(bpe, out) == ["A1" + IM_END, "<think>\nAgain.\n</think>\n\nA2" + IM_END]
    assert out.method == "prefix+sentinel"
    no_reasoning = tokenize_conversation(multi, bpe, template, 4096, MaskOptions(train_on_reasoning=False))
    assert run_texts(bpe, no_reasoning) == ["A1" + IM_END, "A2" + IM_END]


def test_indented_template_file_is_masked_as_rendered(bpe: Any, templates_dir: Path) -> None:
    """A chujiezheng template used as-is renders stray indentation and newlines around turns, so its generation
    prompt is not a prefix of the full render; the sentinel method still trains exactly the (trimmed) content and
    the end-of-turn token."""
    t = family_tokenizer(bpe, "<s>", IM_END, ["<|im_start|>", IM_END])
    template = (templates_dir / "chatml.jinja").read_text(encoding="utf-8")
    c = conv(("user", "Hi"), ("assistant", "  Hello. "), ("user", "More?"), ("assistant", "Yes."))
    out = tokenize_conversation(c, t, template, 4096, truncation="right")
    assert run_texts(t, out) == ["Hello." + IM_END, "Yes." + IM_END]


def test_template_refusing_the_role_order_is_a_row_error(bpe: Any, templates_dir: Path) -> None:
    t = family_tokenizer(bpe, "<s>", IM_END, ["<|im_start|>", IM_END])
    template = chujiezheng(templates_dir / "chatml.jinja")  # requires user/assistant alternation
    c = conv(("user", "One"), ("user", "Two"), ("assistant", "Answer."))
    with pytest.raises(RowError) as err:
        tokenize_conversation(c, t, template, 4096, truncation="right")
    assert err.value.reason == "template_error" and "refused this conversation" in err.value.detail


def test_a_tokenizer_without_offsets_places_edges_by_prefix_or_refuses(tok: Any) -> None:
    """A tokenizer that gives no offsets (a slow one): a span edge is placed where the ids of the text before it
    lead the whole text's ids; where a token crosses the edge the row is refused, never trained by a guess."""

    class NoOffsets(type(tok)):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError("no offsets here")
            return super().__call__(*args, **kwargs)

    slow = copy.deepcopy(tok)
    slow.__class__ = NoOffsets
    plain = conv(("user", "Hi"), ("assistant", "Hello there."))
    assert tokenize(slow, plain) == tokenize(tok, plain)
    crossing = conv(("user", "Code?"), ("assistant", "\nprint(1)"))  # "\n\n" crosses the turn's start
    with pytest.raises(RowError) as err:
        tokenize(slow, crossing)
    assert err.value.reason == "mask_mismatch" and "gives no offsets" in err.value.detail


def test_a_token_across_a_span_edge_is_trained_only_for_leading_whitespace(tok: Any) -> None:
    """The straddle rule: a token that produces trained characters is trained; what it brings from before the
    span may be whitespace only, and nothing after the span's end. Otherwise the row is refused."""
    text = "Say: the answer<|im_end|>"
    assert len(ids(tok, " answer")) == 1  # one token, " answer", across a span that starts at "a"
    out = tokenize_with_spans(tok, text, [(text.index("answer"), len(text))])
    assert out.input_ids == ids(tok, text)
    assert run_texts(tok, out) == [" answer<|im_end|>"]  # the space comes along with its word
    with pytest.raises(RowError) as err:  # the span starts inside "answer": "an" would be trained as well
        tokenize_with_spans(tok, text, [(text.index("swer"), len(text))])
    assert err.value.reason == "mask_mismatch" and "crosses the start" in err.value.detail
    with pytest.raises(RowError) as err:  # the span ends inside "answer": "wer" would be trained as well
        tokenize_with_spans(tok, text, [(0, text.index("wer"))])
    assert err.value.reason == "mask_mismatch" and "crosses the end" in err.value.detail

"""Differential oracle: sftforge's masks on TRL's original templates vs TRL's `{% generation %}` training variants.

For each `trl/X.jinja` that has an `X_training.jinja`, every conversation (all 2,799 rows of the four fixture
datasets plus `EDGE_CASES`: the whole module takes about 15 s on one core, so nothing is sampled) is masked twice:

- sftforge: `render_conversation` + `trained_char_spans(MaskOptions())` on X.jinja, which has no markers, so the
  prefix-diff and sentinel methods place the turns;
- oracle: transformers' `render_jinja_template(..., return_assistant_tokens_mask=True)` on X_training.jinja,
  whose `{% generation %}` blocks say which characters TRL trains.

Per-message `train` flags are cleared first: the oracle cannot see them. Both span lists are merged (adjacent spans
joined). Every conversation gets one label, and the count of each label per template is asserted exactly:

- `agree`: same text, same spans;
- `extra PRE+turn+SUF; ...`: same text, and each oracle span is sftforge's span widened by exactly PRE before and
  SUF after (the distinct (PRE, SUF) pairs are listed); `EXPECTED` says why the training template does that;
- `texts differ only in <think> blocks; ...`: the two templates render different text, identical once every
  `<think>\\n…\\n</think>\\n\\n` block is removed, and the trained strings (think blocks removed) relate as above;
- `sftforge: REASON / oracle: …`: one side refuses the conversation.

A token-level check then compares, for a handful of conversations per template (every 50th row and every edge
case), sftforge's labels on X.jinja with `apply_chat_template(..., return_assistant_tokens_mask=True)` on
X_training.jinja. Wherever both render the same text, sftforge's piecewise tokenization (cut at span edges) gives
exactly the ids of the whole-text tokenization with these tokenizers (`piecewise tokenization differs` is counted
and expected nowhere; it held for all 2,812 conversations when measured), so the masks are compared token by token.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tokenizer_families import EDGE_CASES, TEMPLATE_FAMILY, family_tokenizer

from sftforge.data.conversation import Conversation
from sftforge.data.formats import to_conversation
from sftforge.data.masking import IGNORE_INDEX, MaskOptions, trained_char_spans
from sftforge.data.pipeline import tokenize_conversation
from sftforge.data.readers import SourceRow, iter_rows
from sftforge.data.spans import render_conversation
from sftforge.data.templates import TemplateInfo
from sftforge.errors import RowError

SHARED_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
TRL_DIR = SHARED_FIXTURES / "chat_templates" / "trl"
DATA_DIR = SHARED_FIXTURES / "data"
DATASETS = ("alpaca_en_demo.json", "alpaca_zh_demo.json", "glaive_toolcall_en_demo.json", "v1_sft_demo.jsonl")
ORACLE_TEMPLATES = ("deepseekv3", "gemma3", "llama3", "phi3", "qwen2_5", "qwen3")
THINK_BLOCK = re.compile(r"<think>\n.*?\n</think>\n\n", re.DOTALL)
AGREE = "agree"
NL = "'\\n'"

# glaive: 153 rows with a function_call + observation; plus the 2 tool edge cases.
_TOOL_ROWS = 153 + 2
_ALL = 2799 + len(EDGE_CASES)

# template → {label: (count, why)}; the counts sum to _ALL.
EXPECTED: dict[str, dict[str, tuple[int, str]]] = {
    "llama3": {AGREE: (_ALL, "the generation block is exactly `content | trim + '<|eot_id|>'`")},
    "gemma3": {
        f"extra ''+turn+{NL}": (
            _ALL - _TOOL_ROWS,
            "the generation block ends after '<end_of_turn>\\n'; sftforge stops after <end_of_turn>, the newline "
            "is the next turn's (as for ChatML)",
        ),
        "sftforge: template_error / oracle: TemplateError": (
            _TOOL_ROWS,
            "both Gemma templates raise_exception when roles do not alternate user/assistant",
        ),
    },
    "qwen2_5": {
        f"extra {NL}+turn+{NL}": (
            _ALL,
            "the generation block opens after '<|im_start|>assistant' (so the '\\n' of the header is trained) "
            "and closes after '<|im_end|>\\n'; sftforge trains from after the generation prompt "
            "'<|im_start|>assistant\\n' to <|im_end|>",
        )
    },
    "qwen3": {
        f"extra ''+turn+{NL}": (
            2546,
            "the generation block closes after '<|im_end|>\\n'; sftforge stops at <|im_end|>",
        ),
        f"texts differ only in <think> blocks; extra ''+turn+{NL}": (
            _ALL - 2546,
            "qwen3 renders a <think> block only in the turns after the last user query (dropping earlier "
            "reasoning); qwen3_training renders one in every assistant turn. Each trained turn is the same once "
            "think blocks are removed, but for the trailing '\\n'",
        ),
    },
    "phi3": {
        f"extra ''+turn+{NL}; ''+turn+'\\n<|endoftext|>'": (
            112 + _TOOL_ROWS - 1,
            "the generation block ends after '<|end|>\\n' and the final eos is its own generation block "
            "(merged with the last turn); sftforge stops each turn at <|end|> and does not train the final "
            "<|endoftext|> that the template appends after the conversation. (Phi-3 renders no tool calls: its "
            "tool-call-only turns are placed here like the oracle does, but the full pipeline refuses those rows "
            "with tool_calls_not_rendered — see test_conformance)",
        ),
        "extra ''+turn+'\\n<|endoftext|>'": (
            _ALL - 112 - (_TOOL_ROWS - 1),
            "as above, single-turn (or single trained turn) conversations",
        ),
    },
    "deepseekv3": {
        "extra '<｜Assistant｜>'+turn+''": (
            _ALL - _TOOL_ROWS - 1,
            "the generation block includes the '<｜Assistant｜>' header; sftforge does not train the header, "
            "which is the generation prompt the model is given at inference",
        ),
        "sftforge: template_rewrites_earlier_turns / oracle: renders": (
            _TOOL_ROWS,
            "tool rows (rendered with string arguments, the OpenAI convention this template expects): its "
            "tool-call turns cannot be placed; and inline_think: the template keeps only what follows '</think>' "
            "of the content. The oracle trains them",
        ),
        "extra '<｜Assistant｜>'+turn+''; '<｜tool▁outputs▁end｜>'+turn+''": (
            1,
            "tool_call_with_text: as above, and the generation block also opens before '<｜tool▁outputs▁end｜>'",
        ),
    },
}


@pytest.fixture(scope="module")
def trl_dir() -> Path:
    if not TRL_DIR.is_dir():
        pytest.skip(f"../shared is absent: TRL chat templates not found at {TRL_DIR}")
    return TRL_DIR


@cache
def setup(x: str) -> tuple[Any, str, str, TemplateInfo]:
    tok = family_tokenizer(TEMPLATE_FAMILY[f"trl/{x}.jinja"])
    original = (TRL_DIR / f"{x}.jinja").read_text(encoding="utf-8")
    training = (TRL_DIR / f"{x}_training.jinja").read_text(encoding="utf-8")
    info = TemplateInfo.probe(tok, original)
    assert not info.has_generation_markers  # sftforge uses the prefix-diff and sentinel methods only
    return tok, original, training, info


@cache
def conversations() -> tuple[Conversation, ...]:
    rows = [row for name in DATASETS for row in iter_rows(DATA_DIR / name)]
    rows += [SourceRow(row, f"edge:{case}") for case, row in EDGE_CASES.items()]
    convs = []
    for row in rows:
        conv = to_conversation(row.row, source=row.source)
        for message in conv.messages:
            message.train = None  # the oracle sees no per-message flags
        convs.append(conv)
    return tuple(convs)


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def ours(x: str, conv: Conversation) -> tuple[str, list[tuple[int, int]]] | str:
    tok, _, _, info = setup(x)
    try:
        rendered = render_conversation(conv, tok, info)
        spans = trained_char_spans(conv, rendered, MaskOptions())
    except RowError as e:
        return e.reason
    assert rendered.methods <= {"prefix", "sentinel"}
    return rendered.text, merge(spans)


def oracle(x: str, conv: Conversation) -> tuple[str, list[tuple[int, int]]] | str:
    from transformers.utils.chat_template_utils import render_jinja_template

    tok, _, training, _ = setup(x)
    try:
        (text,), (indices,) = render_jinja_template(
            conversations=[conv.template_messages()],
            tools=conv.tools,
            chat_template=training,
            return_assistant_tokens_mask=True,
            **tok.special_tokens_map,
        )
    except Exception as e:  # noqa: BLE001 — the kind of failure is the label
        return type(e).__name__
    return text, merge(indices)


def extras(pairs: list[tuple[str, str, str]]) -> str:
    """(sftforge piece, oracle extra before, oracle extra after) per turn → the label."""
    found = sorted({f"{before!r}+turn+{after!r}" for _, before, after in pairs})
    return AGREE if found == ["''+turn+''"] else "extra " + "; ".join(found)


def label(x: str, conv: Conversation) -> str:
    return compare(ours(x, conv), oracle(x, conv))


def compare(mine: tuple[str, list] | str, theirs: tuple[str, list] | str) -> str:
    """The label of one conversation from both sides' (text, merged spans), or their refusal."""
    if isinstance(mine, str) or isinstance(theirs, str):
        return f"sftforge: {mine if isinstance(mine, str) else 'trains'} / oracle: " + (
            theirs if isinstance(theirs, str) else "renders"
        )
    (text, spans), (other, their_spans) = mine, theirs
    if len(spans) != len(their_spans):
        return f"{len(spans)} vs {len(their_spans)} trained spans"
    if text == other:
        pairs = []
        for (s0, s1), (o0, o1) in zip(spans, their_spans, strict=True):
            if not (o0 <= s0 and s1 <= o1):
                return "oracle span does not contain sftforge's"
            pairs.append((text[s0:s1], text[o0:s0], text[s1:o1]))
        return extras(pairs)
    if THINK_BLOCK.sub("", text) != THINK_BLOCK.sub("", other):
        return "texts differ"
    pairs = []
    for (s0, s1), (o0, o1) in zip(spans, their_spans, strict=True):
        mine_piece, their_piece = THINK_BLOCK.sub("", text[s0:s1]), THINK_BLOCK.sub("", other[o0:o1])
        at = their_piece.find(mine_piece)
        if at == -1:
            return "texts differ only in <think> blocks; trained turns differ"
        pairs.append((mine_piece, their_piece[:at], their_piece[at + len(mine_piece) :]))
    return "texts differ only in <think> blocks; " + extras(pairs)


@pytest.mark.needs_shared
@pytest.mark.parametrize("x", ORACLE_TEMPLATES)
def test_char_spans_match_the_generation_markers_of_the_training_template(
    shared_data: Path, trl_dir: Path, x: str
) -> None:
    convs = conversations()
    counts = Counter(label(x, conv) for conv in convs)
    print(f"{x}: {dict(counts)}")
    expected = {name: count for name, (count, _) in EXPECTED[x].items()}
    assert sum(expected.values()) == len(convs) == _ALL
    assert dict(counts) == expected


def test_the_labels_are_not_vacuous(trl_dir: Path) -> None:
    """Agreement is exact: a shifted, widened, missing or moved span gets a difference label."""
    conv = to_conversation(EDGE_CASES["multi_turn"])
    mine, theirs = ours("llama3", conv), oracle("llama3", conv)
    assert not isinstance(mine, str) and not isinstance(theirs, str)
    text, spans = mine
    assert len(spans) == 3 and all(text[e - len("<|eot_id|>") : e] == "<|eot_id|>" for _, e in spans)
    assert compare(mine, theirs) == AGREE
    (s0, e0), rest = spans[0], spans[1:]
    assert compare((text, [(s0, e0 + 1), *rest]), theirs) == "oracle span does not contain sftforge's"
    assert compare(mine, (text, [(s0 - 2, e0), *rest])) == "extra ''+turn+''; '\\n\\n'+turn+''"
    assert compare(mine, (text, rest)) == "3 vs 2 trained spans"
    assert compare((text + "x", spans), theirs) == "texts differ"
    assert compare("template_error", theirs) == "sftforge: template_error / oracle: renders"


# ---------------------------------------------------------------- token level

HANDFUL_STRIDE = 50  # every 50th row of each dataset (56 rows) and every edge case


@cache
def handful() -> tuple[Conversation, ...]:
    convs = conversations()
    picked = [c for c in convs if not c.source.startswith("edge:")]
    by_file: dict[str, list[Conversation]] = {}
    for conv in picked:
        by_file.setdefault(conv.source.split(":", 1)[0], []).append(conv)
    sample = [c for group in by_file.values() for c in group[::HANDFUL_STRIDE]]
    return (*sample, *(c for c in convs if c.source.startswith("edge:")))


def runs(mask: list[bool]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for k, on in enumerate(mask):
        if on and out and out[-1][1] == k:
            out[-1] = (out[-1][0], k + 1)
        elif on:
            out.append((k, k + 1))
    return out


# template → {outcome: count} over the handful (69 conversations).
EXPECTED_TOKENS: dict[str, dict[str, int]] = {
    "llama3": {"same ids": 63, "sftforge refuses": 6},  # tool rows: the template drops tool calls
    "qwen2_5": {"same ids": 69},
    "qwen3": {"same ids": 58, "texts differ": 11},  # multi-turn: see EXPECTED["qwen3"]
    "gemma3": {"same ids": 63, "sftforge refuses": 6},  # the tool rows: template_error
    "phi3": {"same ids": 63, "sftforge refuses": 6},  # tool rows: the template drops tool calls
    "deepseekv3": {"same ids": 63, "sftforge refuses": 6},  # tool-call-only rows and inline_think
}


@pytest.mark.needs_shared
@pytest.mark.parametrize("x", ORACLE_TEMPLATES)
def test_token_masks_match_apply_chat_template_on_the_training_template(
    shared_data: Path, trl_dir: Path, x: str
) -> None:
    """Where sftforge's piecewise tokenization of X.jinja gives the same ids as apply_chat_template's whole-text
    tokenization of X_training.jinja, every token sftforge trains the oracle trains too, and each side's trained
    runs decode to exactly its character spans (so the token masks differ by the known extras only)."""
    tok, original, training, _ = setup(x)
    counts: Counter[str] = Counter()
    for conv in handful():
        try:
            mine = tokenize_conversation(conv, tok, original)
        except RowError:
            counts["sftforge refuses"] += 1
            continue
        out = tok.apply_chat_template(
            conv.template_messages(),
            tools=conv.tools,
            chat_template=training,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(out["input_ids"])
        if tok.decode(ids, skip_special_tokens=False) != tok.decode(
            mine.input_ids, skip_special_tokens=False
        ):
            counts["texts differ"] += 1
            continue
        if ids != mine.input_ids:
            counts["piecewise tokenization differs"] += 1
            continue
        counts["same ids"] += 1
        my_mask = [lab != IGNORE_INDEX for lab in mine.labels]
        their_mask = [bool(m) for m in out["assistant_masks"]]
        assert all(t for m, t in zip(my_mask, their_mask, strict=True) if m), conv.source
        char_level = oracle(x, conv)
        assert not isinstance(char_level, str)
        text, spans = char_level
        decoded = [tok.decode(ids[s:e], skip_special_tokens=False) for s, e in runs(their_mask)]
        assert decoded == [text[s:e] for s, e in spans], conv.source
        mine_chars = ours(x, conv)
        assert not isinstance(mine_chars, str)
        mine_decoded = [tok.decode(ids[s:e], skip_special_tokens=False) for s, e in runs(my_mask)]
        assert mine_decoded == [text[s:e] for s, e in mine_chars[1]], conv.source
    print(f"{x}: {dict(counts)}")
    assert dict(counts) == EXPECTED_TOKENS[x]

"""The fast preprocessing paths give exactly what the one-row reference path gives, on the real datasets.

Fast: rows in batches (`process_rows` through `parallel.run_chunks` with the tokenizer thread), the compiled template
rendered directly (`templates.make_renderer`), the Rust tokenizer called once per batch with pieces split at added
tokens and memoised (`encoding.PieceEncoder`), and decoding in one batch.
Reference: one row at a time through `tokenize_row`, rendering through `tokenizer.apply_chat_template`,
tokenizing through `tokenizer(pieces)` and verifying through `tokenizer.decode` — what the code did before the fast
paths existed. Same ids, same labels, same span methods, same truncation, same refusals with the same messages.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tokenizer_families import EDGE_CASES, FAMILIES, OWN_TEMPLATE_FAMILY, TEMPLATE_FAMILY, family_tokenizer

import sftforge.data.encoding as encoding
import sftforge.data.spans as spans
import sftforge.data.turns as turns
from sftforge.data.encoding import Cut, PieceEncoder, decode_many, overlappable
from sftforge.data.formats import to_conversation
from sftforge.data.parallel import chunked, run_chunks
from sftforge.data.pipeline import (
    ALWAYS_FATAL,
    CHUNK_ROWS,
    DROPPED_NOT_BAD,
    TokenizeSpec,
    process_rows,
    tokenize_row,
)
from sftforge.data.readers import SourceRow, iter_rows
from sftforge.data.rows import Dropped
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, _reference_renderer, make_renderer
from sftforge.errors import RowError

DATASETS = (
    "alpaca_en_demo.json",
    "alpaca_zh_demo.json",
    "glaive_toolcall_en_demo.json",
    "v1_sft_demo.jsonl",
    "c4_demo.jsonl",
)
TEMPLATES = ["default", *sorted(TEMPLATE_FAMILY), *sorted(OWN_TEMPLATE_FAMILY)]
OWN_TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
SHARED_TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"


@contextmanager
def reference_paths() -> Iterator[None]:
    """Route rendering through apply_chat_template and (de)tokenizing through the tokenizer's own calls."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(spans, "make_renderer", _reference_renderer)
        mp.setattr(turns, "make_renderer", _reference_renderer)
        mp.setattr(encoding, "plain_backend", lambda tokenizer: None)
        yield
    finally:
        mp.undo()


def reference_row(spec: TokenizeSpec, row: SourceRow) -> tuple[str, str, Any]:
    """The pipeline's answer for one row, the way it was computed before batching (one row, one encode at a time)."""
    try:
        if row.error is not None:
            raise row.error
        conv = to_conversation(row.row, source=row.source)
        out = tokenize_row(conv, spec)
    except RowError as e:
        message = f"{row.source}: {e.detail}"
        if e.reason in DROPPED_NOT_BAD:  # with the row's length, which the length statistics count
            return "drop", e.reason, Dropped(message, e.length)
        return "fatal" if e.reason in ALWAYS_FATAL else "bad", e.reason, message
    toks = [(tok.input_ids, tok.labels, tok.method, tok.truncated) for tok in out.examples]
    if out.split is None:
        return "ok", conv.format, toks[0]
    sources = [f"{row.source}#turn{turn}" for turn in out.turns]
    return "split", conv.format, (out.split.reason, toks, sources, dict(out.dropped))


def fast_rows(spec: TokenizeSpec, rows: list[SourceRow]) -> list[tuple[str, str, Any]]:
    out = []
    batches = run_chunks(
        process_rows, spec, chunked(rows, CHUNK_ROWS), 1, thread=overlappable(spec.tokenizer)
    )
    for batch in batches:
        for status, what, payload in batch:
            out.append((status, what, plain(status, payload)))
    return out


def plain(status: str, payload: Any) -> Any:
    """A process_rows payload as reference_row writes it."""
    if status not in ("ok", "split"):
        return payload
    pairs = payload.examples if status == "split" else [payload]
    for example, tok in pairs:
        assert (example.input_ids, example.labels) == (tok.input_ids, tok.labels)
    toks = [(tok.input_ids, tok.labels, tok.method, tok.truncated) for _, tok in pairs]
    if status == "ok":
        return toks[0]
    return payload.reason, toks, [example.source for example, _ in pairs], dict(payload.dropped)


def reference_rows(spec: TokenizeSpec, rows: list[SourceRow]) -> list[tuple[str, str, Any]]:
    with reference_paths():
        return [reference_row(spec, row) for row in rows]


def assert_same(fast: list, reference: list, rows: list[SourceRow]) -> None:
    assert len(fast) == len(reference)
    for row, got, want in zip(rows, fast, reference, strict=True):
        assert got == want, f"{row.source}: fast path differs from the reference"


@cache
def fixture_rows(path: str) -> tuple[SourceRow, ...]:
    return tuple(iter_rows(Path(path)))


@cache
def template_spec(name: str, max_length: int) -> TokenizeSpec:
    from sftforge.data.templates import TemplateInfo  # noqa: F401 — TokenizeSpec.build probes it

    family = "chatml" if name == "default" else {**TEMPLATE_FAMILY, **OWN_TEMPLATE_FAMILY}[name]
    root = OWN_TEMPLATES if name in OWN_TEMPLATE_FAMILY else SHARED_TEMPLATES
    text = DEFAULT_CHAT_TEMPLATE if name == "default" else (root / name).read_text(encoding="utf-8")
    return TokenizeSpec.build(family_tokenizer(family), text, max_length, truncation="turns")


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path) -> TokenizeSpec:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenizeSpec.build(tok, tok.chat_template, 512, truncation="turns")


# ---------------------------------------------------------------- whole pipeline, every row


@pytest.mark.parametrize("dataset", DATASETS)
def test_batched_rows_equal_the_one_row_reference(
    dataset: str, shared_data: Path, tiny_spec: TokenizeSpec
) -> None:
    """Every row of every fixture dataset, with the tiny model (the benchmark setting: max_length 512, turns —
    long conversations lose rounds, several encodes per row)."""
    assert overlappable(tiny_spec.tokenizer)  # so the threaded path is the one under test
    rows = list(fixture_rows(str(shared_data / dataset)))
    fast = fast_rows(tiny_spec, rows)
    assert_same(fast, reference_rows(tiny_spec, rows), rows)
    assert sum(status == "ok" for status, _, _ in fast) > len(rows) // 3


@pytest.mark.parametrize("name", TEMPLATES)
def test_batched_rows_equal_the_reference_for_every_template(name: str, shared_data: Path) -> None:
    """Every fixture template with its family's tokenizer, on the edge cases and the first rows of each dataset,
    with a short max_length so that rounds are dropped."""
    if name not in ("default", *OWN_TEMPLATE_FAMILY) and not (SHARED_TEMPLATES / name).is_file():
        pytest.skip(f"template {name} not found")
    spec = template_spec(name, 160)
    rows = [SourceRow(row, f"edge:{case}") for case, row in EDGE_CASES.items()]
    for dataset in DATASETS[:4]:
        rows += fixture_rows(str(shared_data / dataset))[:12]
    assert_same(fast_rows(spec, rows), reference_rows(spec, rows), rows)


# ---------------------------------------------------------------- the pieces


def family_template(family: str) -> str:
    """A fixture template written for `family` ("llama2-legacy": Llama 2's, the same tokens as "llama2")."""
    templates = {**TEMPLATE_FAMILY, **OWN_TEMPLATE_FAMILY}
    return next(n for n, f in templates.items() if f == family.removesuffix("-legacy"))


def rendered_texts(spec: TokenizeSpec, shared_data: Path, per_dataset: int = 25) -> list[str]:
    texts = []
    for dataset in DATASETS[:4]:
        for row in fixture_rows(str(shared_data / dataset))[:per_dataset]:
            conv = to_conversation(row.row, source=row.source)
            try:
                texts.append(
                    make_renderer(spec.tokenizer, spec.template.text, conv.tools)(
                        conv.template_messages(), False
                    )
                )
            except RowError:
                continue
    return texts


TRICKY = [
    "",
    " ",
    "\n\n",
    "plain text",
    "  leading and trailing  ",
    "<|im_start|><|im_end|>",
    "<|im_start|>user\n  spaced  <|im_end|>\n<|im_start|>assistant\n",
    "a<|im_end|>b<|im_end|>\n<|endoftext|>",
    "<s>[INST] hi [/INST] ok</s><s>[INST]",
    "<|start_header_id|>user<|end_header_id|>\n\nhey<|eot_id|>",
    '<think>\nreason\n</think>\n\nanswer<tool_call>{"a": 1}</tool_call>',
    "naïve café — 東京 🙂 e\u0301",
    "<|im_end|<|im_end|>>",
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_piece_encoder_equals_the_tokenizer_call(family: str, shared_data: Path) -> None:
    tok = family_tokenizer(family)
    spec = template_spec(family_template(family), 1 << 20)
    texts = TRICKY + rendered_texts(spec, shared_data)
    texts += [t[: len(t) // 2] for t in texts] + [t[len(t) // 3 :] for t in texts]  # cuts anywhere
    encoder = PieceEncoder(tok)
    # These tokenizers get the by-parts path, but for a Metaspace pre-tokenizer that marks only the text's start
    # ("llama2"): a part encoded alone would get a "▁" it lacks after an added token.
    assert (encoder.split is not None) == (FAMILIES[family].sentencepiece != "metaspace")
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert encoder.encode(texts) == want
    assert encoder.encode(list(reversed(texts))) == list(reversed(want))  # from the memo now
    assert decode_many(tok, want) == [
        tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in want
    ]


def reference_cut(offsets: list[tuple[int, int]], pos: int) -> Cut:
    """The Cut at `pos` read off the tokenizer's own offsets, token by token."""
    before = sum(1 for _, end in offsets if end <= pos)
    after = max(before, sum(1 for start, _ in offsets if start < pos))
    crossing = offsets[before:after]
    if not crossing:
        return Cut(before, after, pos, pos)
    return Cut(before, after, min(a for a, _ in crossing), max(b for _, b in crossing))


def inside_parts(encoder: PieceEncoder, text: str) -> list[int]:
    """One position inside each part, a few characters in (where spans start, after "<|im_start|>assistant" or
    "[/INST]"): in the first half of the part, where `locate` probes instead of asking for offsets."""
    parts = encoder.split[0](text) if encoder.split else [text]
    positions, start = [], 0
    for part in parts:
        rel = min(len(part) // 2, 1 + start % 4)
        if rel:
            positions.append(start + rel)
        start += len(part)
    return positions


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_locate_equals_the_tokenizers_offsets(family: str, shared_data: Path) -> None:
    """Placing positions among the whole text's tokens, by prefix probes (no offsets asked) or by offsets, gives
    what the tokenizer's `return_offsets_mapping` says — at every character of tricky texts and at many of real
    renderings, including positions inside words, multi-byte characters and added tokens."""
    tok = family_tokenizer(family)
    spec = template_spec(family_template(family), 1 << 20)
    texts = TRICKY + rendered_texts(spec, shared_data, per_dataset=6)
    near = [inside_parts(PieceEncoder(tok), t) for t in texts]
    spread = [list(range(len(t) + 1)) if len(t) < 80 else list(range(0, len(t) + 1, 7)) for t in texts]
    for positions in (near, spread):
        encoder = PieceEncoder(tok)
        asked: list[str] = []
        offsets = encoder._offsets
        encoder._offsets = lambda parts, asked=asked, offsets=offsets: (asked.extend(parts), offsets(parts))[
            1
        ]
        got = encoder.locate(texts, positions)
        again = encoder.locate(list(reversed(texts)), list(reversed(positions)))  # from the memos now
        assert again == list(reversed(got))
        for text, wanted, (ids, cuts) in zip(texts, positions, got, strict=True):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            assert ids == enc["input_ids"]
            assert cuts == [reference_cut(enc["offset_mapping"], pos) for pos in wanted], text[:60]
        placed_inside = {part for part, _ in encoder.cuts}
        if positions is near and encoder.split is not None:  # some placed by probing, without offsets
            assert len(asked) < len(placed_inside), (len(asked), len(placed_inside))


def test_a_crossing_token_is_found_by_offsets_where_the_probe_fails() -> None:
    """ "\n" closing a ChatML header and a content's leading "\n" merge into one byte-level token: the probe (the
    header's ids start the part's ids) fails, and the offsets place the crossing token."""
    tok = family_tokenizer("chatml")
    text = "<|im_start|>assistant\n\nprint(1)<|im_end|>"
    pos = text.index("\nprint")
    encoder = PieceEncoder(tok)
    assert encoder.split is not None
    ((ids, [cut]),) = encoder.locate([text], [[pos]])
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert cut.after == cut.before + 1 and tok.decode(ids[cut.before : cut.after]) == "\n\n"
    assert (cut.start, cut.end) == (pos - 1, pos + 1)


def test_parts_are_not_used_where_they_would_change_ids() -> None:
    """An added token that strips spaces around it (lstrip/rstrip) merges its neighbours: encoding part by part
    would differ, so the encoder must fall back to whole texts — and still equal the tokenizer's call."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = family_tokenizer("chatml")
    spec = json.loads(base.backend_tokenizer.to_str())
    for token in spec["added_tokens"]:
        if token["content"] == "<|im_end|>":
            token["lstrip"] = token["rstrip"] = True
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>"
    )
    encoder = PieceEncoder(tok)
    assert encoder.split is None
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in TRICKY]
    assert encoder.encode(TRICKY) == want
    whole, parts = (
        tok("a  <|im_end|>  b", add_special_tokens=False)["input_ids"],
        [
            *tok("a  ", add_special_tokens=False)["input_ids"],
            *tok("<|im_end|>", add_special_tokens=False)["input_ids"],
            *tok("  b", add_special_tokens=False)["input_ids"],
        ],
    )
    assert whole != parts  # the reason for the fall-back: this test would not notice a wrong one otherwise


def test_a_tokenizer_with_python_overrides_uses_its_own_call() -> None:
    tok = copy.deepcopy(family_tokenizer("chatml"))
    tok.backend_tokenizer.enable_truncation(8)  # state transformers' call would reset: not the plain backend
    assert encoding.plain_backend(tok) is None and not overlappable(tok)
    assert PieceEncoder(tok).encode(["one two three four five six seven eight nine ten"]) == [
        tok("one two three four five six seven eight nine ten", add_special_tokens=False)["input_ids"]
    ]


@pytest.mark.parametrize("name", TEMPLATES)
def test_renderer_equals_apply_chat_template(name: str, shared_data: Path) -> None:
    spec = template_spec(name, 1 << 20)
    tools = [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "name": None}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "reasoning": "thought"},  # an alias of reasoning_content
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2", "reasoning_content": "more", "tool_calls": None},
        ],
        [{"role": "assistant", "content": "I start."}],
        [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    ]
    for row in fixture_rows(str(shared_data / "glaive_toolcall_en_demo.json"))[:5]:
        conv = to_conversation(row.row, source=row.source)
        conversations.append(conv.template_messages())
    for messages in conversations:
        for with_tools in (None, tools):
            fast = make_renderer(spec.tokenizer, spec.template.text, with_tools)
            slow = _reference_renderer(spec.tokenizer, spec.template.text, with_tools)
            for end in range(1, len(messages) + 1):
                for prompt in (False, True):
                    assert outcome(fast, messages[:end], prompt) == outcome(slow, messages[:end], prompt)


def outcome(render: Any, messages: list[dict], prompt: bool) -> tuple[str, str]:
    try:
        return "text", render(messages, prompt)
    except RowError as e:
        return "refused", e.detail


def test_batched_rows_cannot_loop_when_encodings_are_not_found_again(
    shared_data: Path, tiny_spec: TokenizeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a later change make a shortened conversation unrecognisable (new Message objects each time), a row
    stops asking after more encodings than it has rounds and is answered the one-row way: same result, no hang."""
    import itertools

    import sftforge.data.rows as rows_mod

    fresh = itertools.count()
    monkeypatch.setattr(rows_mod, "_key", lambda index, conv, mode: (index, next(fresh)))
    rows = list(fixture_rows(str(shared_data / "glaive_toolcall_en_demo.json"))[:20])
    fast = [(s, w, plain(s, p)) for s, w, p in rows_mod.process_rows(tiny_spec, rows)]
    assert_same(fast, reference_rows(tiny_spec, rows), rows)

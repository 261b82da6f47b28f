"""Tokenizers that carry a real model family's special tokens, for testing masks on real chat templates offline.

Most families' tokenizer is the tiny byte-level BPE of `train_bpe_tokenizer(default_corpus())` with that
family's special tokens (and bos/eos/pad/unk roles) instead of ours: a rendered template tokenizes the way the
real model's tokenizer splits it (every special token atomic, the family's other markers plain text). ChatML's
tokens are removed from the other families, so e.g. `<|im_end|>` in a Llama 3 conversation is ordinary text, as
it is for Llama 3. What is not reproduced: the real vocabularies and merges, and per-token `rstrip`/`lstrip`
flags (all added tokens here strip nothing).

The SentencePiece families (Llama 2, Mistral v0.1) get the real pipeline instead: `train_sentencepiece_tokenizer`
(Metaspace/"▁" words, byte fallback, `<unk>`/`<s>`/`</s>` as ids 0-2), in the variant the checkpoint ships —
"llama2" as transformers 5 builds Llama 2's tokenizer (`LlamaTokenizer`: a Metaspace pre-tokenizer that marks
only the start of the text), "mistral" as Mistral v0.1's tokenizer.json holds it (the legacy normalizer that
puts a "▁" after every special token); "llama2-legacy" is Llama 2's own tokenizer.json (legacy too).

Tokenizers are cached per family and shared: deep-copy one before changing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class FamilySpec:
    """A family's tokens as its instruct model's tokenizer names them."""

    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    specials: tuple[str, ...] = ()  # further special tokens (atomic, dropped by skip_special_tokens)
    added: tuple[str, ...] = ()  # atomic but not special (kept by skip_special_tokens)
    add_bos: bool = False  # a plain tokenizer(text) call prepends bos (chat templates write their own)
    sentencepiece: str | None = (
        None  # None: the byte-level BPE; else a `train_sentencepiece_tokenizer` variant
    )


_QWEN_TOOLS = ("<tool_call>", "</tool_call>")
_DEEPSEEK_TOOLS = tuple(
    f"<｜tool▁{name}｜>"
    for name in (
        "calls▁begin",
        "calls▁end",
        "call▁begin",
        "call▁end",
        "sep",
        "outputs▁begin",
        "outputs▁end",
        "output▁begin",
        "output▁end",
    )
)
_LLAMA2 = FamilySpec(eos="</s>", bos="<s>", unk="<unk>", add_bos=True, sentencepiece="metaspace")
_LLAMA2_LEGACY = FamilySpec(eos="</s>", bos="<s>", unk="<unk>", add_bos=True, sentencepiece="legacy")

FAMILIES: dict[str, FamilySpec] = {
    # Qwen2.5 / Qwen3 and generic ChatML: no bos, eos = end of turn, pad = end of text.
    "chatml": FamilySpec(
        eos="<|im_end|>", pad="<|endoftext|>", specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ),
    "qwen2.5": FamilySpec(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        added=_QWEN_TOOLS,
    ),
    "qwen3": FamilySpec(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        added=("<think>", "</think>", *_QWEN_TOOLS, "<tool_response>", "</tool_response>"),
    ),
    # Llama 3 Instruct: eos is the end of turn <|eot_id|>; <|end_of_text|> ends documents; no pad token.
    "llama3": FamilySpec(
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        add_bos=True,
    ),
    # The SentencePiece Llama 2 vocabulary, shared by Mistral, Zephyr, Vicuna and Alpaca: [INST] etc. are text.
    "llama2": _LLAMA2,  # as transformers 5 loads Llama 2 (Metaspace, prepend_scheme="first")
    "llama2-legacy": _LLAMA2_LEGACY,  # Llama 2's own tokenizer.json (legacy normalizer)
    "mistral": _LLAMA2_LEGACY,  # Mistral v0.1's tokenizer.json (legacy normalizer), loaded as it is
    "gemma": FamilySpec(
        eos="<eos>",
        bos="<bos>",
        pad="<pad>",
        unk="<unk>",
        specials=("<start_of_turn>", "<end_of_turn>"),
        add_bos=True,
    ),
    # Phi-3-mini-instruct: eos/pad <|endoftext|>, the role markers and <|end|> special.
    "phi3": FamilySpec(
        eos="<|endoftext|>",
        bos="<s>",
        pad="<|endoftext|>",
        unk="<unk>",
        specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ),
    # DeepSeek-V3: bos/eos special; the role, tool and think markers are atomic but not special.
    "deepseekv3": FamilySpec(
        eos="<｜end▁of▁sentence｜>",
        bos="<｜begin▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>",
        added=("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", *_DEEPSEEK_TOOLS),
    ),
    # gpt-oss (Harmony, o200k_harmony): eos <|return|> (what a final answer ends with), pad <|endoftext|>, no bos
    # added; every Harmony marker is special. Its template is tests/fixtures/chat_templates/harmony.jinja (ours).
    "gptoss": FamilySpec(
        eos="<|return|>",
        bos="<|startoftext|>",
        pad="<|endoftext|>",
        specials=(
            "<|endoftext|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|call|>",
            "<|constrain|>",
            "<|endofprompt|>",
        ),
    ),
}

# Fixture template file (relative to the chat_templates folder) → the family whose tokenizer it was written for.
TEMPLATE_FAMILY: dict[str, str] = {
    "alpaca.jinja": "llama2",
    "chatml.jinja": "chatml",
    "gemma-it.jinja": "gemma",
    "llama-2-chat.jinja": "llama2",
    "llama-3-instruct.jinja": "llama3",
    "mistral-instruct.jinja": "mistral",
    "phi-3.jinja": "phi3",
    "qwen2.5-instruct.jinja": "qwen2.5",
    "vicuna.jinja": "llama2",
    "zephyr.jinja": "mistral",
    **{
        f"trl/{name}{variant}.jinja": family
        for name, family in {
            "deepseekv3": "deepseekv3",
            "gemma3": "gemma",
            "llama3": "llama3",
            "phi3": "phi3",
            "qwen2_5": "qwen2.5",
            "qwen3": "qwen3",
        }.items()
        for variant in ("", "_training")
    },
}


# Templates written by sftforge for its tests (tests/fixtures/chat_templates/) → the family they are written for.
OWN_TEMPLATE_FAMILY: dict[str, str] = {"harmony.jinja": "gptoss"}


@cache
def _base_tokenizer_json() -> str:
    from sftforge.testing.corpus import default_corpus
    from sftforge.testing.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(default_corpus(), vocab_size=1024).backend_tokenizer.to_str()


@cache
def _sentencepiece_tokenizer_json(variant: str) -> str:
    from sftforge.testing.corpus import default_corpus
    from sftforge.testing.sentencepiece import train_sentencepiece_tokenizer

    tok = train_sentencepiece_tokenizer(default_corpus(), vocab_size=1024, variant=variant)
    return tok.backend_tokenizer.to_str()


@cache
def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with `family`'s special tokens (one of FAMILIES). Shared: do not modify it."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    data = json.loads(
        _sentencepiece_tokenizer_json(spec.sentencepiece) if spec.sentencepiece else _base_tokenizer_json()
    )
    # Drop our ChatML/think tokens: the family gets exactly its own (they stay in the BPE vocabulary, unreachable).
    data["added_tokens"] = []
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,  # exact round trips
        padding_side="right",
    )
    roles = {"bos_token": spec.bos, "eos_token": spec.eos, "pad_token": spec.pad, "unk_token": spec.unk}
    tok.add_special_tokens(
        {
            **{k: AddedToken(v, special=True, normalized=False) for k, v in roles.items() if v},
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in spec.specials
            ],
        }
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added])
    if spec.add_bos:
        tok.add_bos_token = True
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Edge-case rows (the `messages` format, as a data file holds them) that stress masking on any template.

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
_RESULT = {"role": "tool", "name": "get_weather", "content": '{"sky": "sunny", "celsius": 21}'}


def _turn(role: str, content: str, **extra: object) -> dict:
    return {"role": role, "content": content, **extra}


EDGE_CASES: dict[str, dict] = {
    "no_system": {"messages": [_turn("user", "What is 2 + 2?"), _turn("assistant", "2 + 2 = 4.")]},
    "system_first": {
        "messages": [
            _turn("system", "You are terse."),
            _turn("user", "What is 2 + 2?"),
            _turn("assistant", "Four."),
        ]
    },
    "multi_turn": {
        "messages": [
            _turn("system", "You are a patient tutor."),
            _turn("user", "Name a prime number."),
            _turn("assistant", "Seven is prime."),
            _turn("user", "Another one?"),
            _turn("assistant", "Eleven is prime too."),
            _turn("user", "Is nine prime?"),
            _turn("assistant", "No: nine is three times three."),
        ]
    },
    "train_false_turn": {
        "messages": [
            _turn("user", "Greet me."),
            _turn("assistant", "Hello there, stranger.", loss_weight=0),
            _turn("user", "Again, politely."),
            _turn("assistant", "Good day to you."),
        ]
    },
    "answer_dot": {"messages": [_turn("user", "Reply with a single dot."), _turn("assistant", ".")]},
    "answer_spaced": {"messages": [_turn("user", "Reply with ok."), _turn("assistant", " ok ")]},
    "chinese_emoji": {
        "messages": [
            _turn("system", "你是一个乐于助人的助手。"),
            _turn("user", "你好！👋🏽 今天怎么样？"),
            _turn("assistant", "很好，谢谢！😀🇨🇳 有什么可以帮你的吗？"),
        ]
    },
    "template_like_text": {
        "messages": [
            _turn("user", "What do <|im_end|>, <|eot_id|>, [INST] and <end_of_turn> mean?"),
            _turn(
                "assistant",
                "They end turns: <|im_end|> (ChatML), <|eot_id|> (Llama 3), <end_of_turn> (Gemma), </s> "
                "(Llama 2); [INST] opens a Llama 2 prompt.",
            ),
        ]
    },
    "reasoning": {
        "messages": [
            _turn("user", "What is 6 x 7?"),
            _turn("assistant", "It is 42.", reasoning_content="Six sevens make forty-two."),
        ]
    },
    "multi_turn_reasoning": {
        "messages": [
            _turn("user", "What is 6 x 7?"),
            _turn("assistant", "It is 42.", reasoning_content="Six sevens make forty-two."),
            _turn("user", "And 6 x 8?"),
            _turn("assistant", "It is 48.", reasoning_content="Add one more six: forty-eight."),
        ]
    },
    "inline_think": {
        "messages": [
            _turn("user", "What is 9 x 9?"),
            _turn("assistant", "<think>\nNine nines make eighty-one.\n</think>\n\nIt is 81."),
        ]
    },
    "tool_calls": {
        "tools": _TOOLS,
        "messages": [
            _turn("system", "Use the tools when they help."),
            _turn("user", "What is the weather in Paris?"),
            _turn("assistant", "", tool_calls=[_CALL]),
            _RESULT,
            _turn("assistant", "It is sunny and 21 °C in Paris."),
        ],
    },
    "tool_call_with_text": {
        "tools": _TOOLS,
        "messages": [
            _turn("user", "Is it warm in Paris?"),
            _turn("assistant", "Let me look that up.", tool_calls=[_CALL]),
            _RESULT,
            _turn("assistant", "Yes, 21 °C and sunny."),
        ],
    },
}

"""A SentencePiece-style tokenizer trained here: Llama 2's pipeline on a small vocabulary, for tests and the demo.

Real Llama 2 / Mistral (≤ v0.3) / many Chinese models use a SentencePiece BPE: spaces become "▁", a word's first
piece carries that "▁", characters outside the vocabulary fall back to byte tokens `<0x00>`…`<0xFF>`, and `<unk>`,
`<s>`, `</s>` are ids 0, 1, 2 with the bytes right after them. Their `tokenizer.json` files come in two variants,
and both are built here:

- `variant="legacy"` — what Llama 2's and Mistral v0.1's `tokenizer.json` hold: normalizer `Prepend("▁")` +
  `Replace(" ", "▁")`, no pre-tokenizer. The normalizer runs on every stretch between special tokens, so each one
  gets a "▁" of its own (`<s>[INST]` is `<s>`, `▁[`, …) — the "legacy" behaviour.
- `variant="metaspace"` — what transformers builds with `legacy=False` (its own `LlamaTokenizer` does so from the
  vocabulary, whatever the json says): pre-tokenizer `Metaspace("▁", prepend_scheme="first", split=False)`, no
  normalizer; only the very start of the text gets a "▁".

The decoder is Llama 2's for both: `Replace("▁", " ")`, `ByteFallback`, `Fuse`, `Strip(" ", 1, 0)` — decoding drops
one leading space, so decoding a slice of a text does not always give that slice back.

Pieces never cross a word boundary (trained with a Metaspace split, as SentencePiece does), and newlines, tabs and
carriage returns are kept out of the vocabulary, so they are byte tokens (`<0x0A>`) as in Llama 2. Training is
deterministic: same texts, same tokenizer.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sftforge.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<s>", "</s>"
SP_SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 3…258
SP_VARIANTS = ("legacy", "metaspace")
SP_MIN_VOCAB_SIZE = len(SP_SPECIAL_TOKENS) + len(BYTE_TOKENS) + 1  # at least "▁" besides the bytes
SPACE = "▁"

# Llama 2 chat's published template (HF meta-llama/Llama-2-*-chat-hf), spelled out: a BOS opens every [INST], the
# system prompt sits in the first user turn, an assistant turn is " " + content + " " + eos.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
}
_LEGACY_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ],
}
_METASPACE = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first", "split": False}


def _train_pieces(texts: Iterable[str], vocab_size: int) -> dict[str, Any]:
    """The trained BPE (tokenizer.json as a dict): ids 0-2 special, 3-258 bytes, then pieces and their merges."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN, byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Control characters stay out of the vocabulary: byte tokens, as "\n" is <0x0A> in Llama 2.
            pre_tokenizers.Split(Regex(r"[\r\n\t]"), behavior="removed"),
            # Words as SentencePiece sees them ("▁word"): no piece spans two words.
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # The bytes ride along as "special" only to get ids 3…258; they are not added tokens afterwards.
        special_tokens=[*SP_SPECIAL_TOKENS, *BYTE_TOKENS],
        min_frequency=2,
        # The rarest characters fall back to bytes rather than outgrow `vocab_size` (SentencePiece's coverage).
        limit_alphabet=vocab_size - len(SP_SPECIAL_TOKENS) - len(BYTE_TOKENS),
        show_progress=False,
    )
    backend.train_from_iterator(_without_special_tokens(texts), trainer=trainer)
    return json.loads(backend.to_str())


def _without_special_tokens(texts: Iterable[str]) -> Iterable[str]:
    """The corpus without special tokens, ours or ChatML's: no piece may be learnt from them, so `<|im_end|>` or
    `<think>` in a conversation is spelt out in several pieces, as Llama 2's vocabulary spells them."""
    from sftforge.testing.tiny import EXTRA_TOKENS, SPECIAL_TOKENS

    markers = (*SP_SPECIAL_TOKENS, *SPECIAL_TOKENS, *EXTRA_TOKENS)
    for text in texts:
        for token in markers:
            text = text.replace(token, " ")
        yield text


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    chat_template: str = LLAMA2_CHAT_TEMPLATE,
    variant: str = "legacy",
) -> PreTrainedTokenizerFast:
    """Train a Llama 2-style SentencePiece BPE with byte fallback on `texts` (see the module docstring).

    `<unk>` (0), `<s>` (1, bos), `</s>` (2, eos) are the only added tokens; no pad token, as in Llama 2 (sftforge
    picks one when loading). A plain `tokenizer(text)` call prepends `<s>`, as Llama 2's does; chat templates write
    their own. `vocab_size` counts every token (a small corpus may give fewer)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if variant not in SP_VARIANTS:
        raise ConfigError(f"variant {variant!r} is unknown. Choose one of: {', '.join(SP_VARIANTS)}.")
    if vocab_size < SP_MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: a SentencePiece tokenizer with byte fallback needs at least "
            f"{SP_MIN_VOCAB_SIZE} (3 special tokens + 256 bytes + pieces)."
        )
    data = _train_pieces(texts, vocab_size)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in SP_SPECIAL_TOKENS]
    for token in data["added_tokens"]:  # as in Llama 2's tokenizer.json
        token.update(normalized=False, special=True)
    data["model"].update(
        unk_token=UNK_TOKEN,
        byte_fallback=True,
        fuse_unk=True,
        continuing_subword_prefix=None,
        end_of_word_suffix=None,
    )
    legacy = variant == "legacy"
    data["normalizer"] = _LEGACY_NORMALIZER if legacy else None
    data["pre_tokenizer"] = None if legacy else _METASPACE
    data["decoder"] = _DECODER
    data["post_processor"] = None  # transformers writes the BOS-adding one (add_bos_token below)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    tokenizer.add_bos_token = True
    tokenizer.chat_template = chat_template
    return tokenizer

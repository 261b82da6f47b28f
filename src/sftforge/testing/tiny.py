"""Tiny models of real architectures with a BPE tokenizer trained here, for tests, the offline demo and benchmarks.

Everything is built locally and deterministically (same arguments -> same tokenizer.json and same weights), and
saved as an ordinary Hugging Face folder that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load with
no network and no remote code.

The tokenizer uses exactly Qwen2's pipeline (NFC, Qwen2's split regex, byte-level BPE). That is deliberate: for
qwen2-family configs `AutoTokenizer` ignores the saved class and rebuilds the pipeline as `Qwen2Tokenizer`, so any
other pipeline would tokenize differently after a reload. Other architectures load it as-is (`TokenizersBackend`).

torch and transformers are imported inside functions so that importing this module (the CLI does, for `--arch`
choices) stays cheap.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, DEFAULT_END_OF_TURN
from sftforge.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
# "<|im_end|>": generation stops at the end of the assistant turn, as in Qwen2 instruct.
EOS_TOKEN = DEFAULT_END_OF_TURN
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)  # ids 0, 1, 2
# Single tokens, but not "special": skip_special_tokens=True must keep them, as Qwen2/Qwen3 do.
EXTRA_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
# Qwen2's pre-tokenizer regex (see the module docstring for why we must use exactly this one).
QWEN2_SPLIT_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)  # every byte must stay encodable


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _without_added_tokens(texts: Iterable[str]) -> Iterator[str]:
    """Cut the special/added tokens out of the training text: they are atomic, so they must not shape merges."""
    pattern = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + EXTRA_TOKENS))
    for text in texts:
        for piece in pattern.split(text):
            if piece:
                yield piece


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, chat_template: str = DEFAULT_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`; `vocab_size` counts every token (a small corpus may give fewer).

    Special tokens: pad `<|endoftext|>` (id 0), `<|im_start|>` (1), eos `<|im_end|>` (2); no BOS, as in Qwen2.
    `<think>`, `</think>`, `<tool_call>`, `</tool_call>` are single non-special tokens (the last ids).
    Any UTF-8 text round-trips: decode(encode(t)) == NFC(t).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)} special/added tokens)."
        )
    backend = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(EXTRA_TOKENS),  # the extra tokens are appended after training
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(_without_added_tokens(texts), trainer=trainer)
    # Same meaning as the trainer's None, but spelled as Qwen2Tokenizer spells it, so a reload is identical.
    backend.model.continuing_subword_prefix = ""
    backend.model.end_of_word_suffix = ""
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Qwen2Tokenizer (what AutoTokenizer rebuilds for qwen2 configs) defaults unk to <|endoftext|>; name it
        # here too so the tokenizer is the same before and after a reload. Byte-level BPE never emits it.
        unk_token=PAD_TOKEN,
        extra_special_tokens=[SPECIAL_TOKENS[1], EOS_TOKEN],  # as Qwen2.5's additional_special_tokens
        model_max_length=1024,
        clean_up_tokenization_spaces=False,  # cleanup would turn "a ." into "a." and break exact round trips
        padding_side="right",
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Built-in corpus
# ---------------------------------------------------------------------------------------------------------------

_EN_SUBJECTS = [
    "The model",
    "A student",
    "My friend",
    "The assistant",
    "This function",
    "Our team",
    "The user",
]
_EN_VERBS = ["reads", "writes", "explains", "checks", "returns", "learns", "answers", "describes"]
_EN_OBJECTS = [
    "a short story about the sea",
    "the weather in Paris",
    "three facts about prime numbers",
    "the answer to the question",
    "a list of JSON objects",
    "the difference between 'it's' and 'its'",
    "why the sky is blue",
    "how to sort a list in Python",
]
_EN_TAILS = ["", " today.", " quickly!", " again?", " in two steps.", ", and then stops.", " (see below)."]
_ZH_SUBJECTS = ["我", "你", "他们", "老师", "这个模型", "我们的团队", "小明"]
_ZH_VERBS = ["喜欢", "正在学习", "想要了解", "写了", "解释了", "回答了"]
_ZH_OBJECTS = ["中文和英文", "今天的天气", "一个简单的问题", "机器学习", "北京的历史", "数学题", "一首诗"]
_ZH_TAILS = ["。", "！", "？", "，然后休息了。", "，非常有意思。"]
# Word lists for free-form sentences: enough variety that a 1024-token vocabulary fills up.
# (One string split on spaces reads better than 200 quoted words.)
_EN_WORDS = (  # noqa: SIM905
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "good new first last long great little own other old big high different small large next early young "
    "important few public bad same able is was are be have do say get make go know take see come think look "
    "want give use find tell ask seem feel try leave call keep let begin show hear play run move live believe "
    "bring happen write provide sit stand lose pay meet include continue set learn lead understand watch follow "
    "stop create speak read allow add spend grow open walk win offer remember love consider appear buy wait "
    "model token train data loss batch layer tensor gradient prompt template dataset epoch sample"
).split()
_ZH_WORDS = (  # noqa: SIM905
    "我们 你们 他们 今天 明天 昨天 时间 学校 学生 老师 朋友 家庭 工作 公司 问题 答案 世界 中国 北京 上海 "
    "城市 国家 历史 文化 语言 中文 英文 数学 科学 技术 电脑 手机 模型 数据 训练 学习 理解 知道 觉得 喜欢 "
    "需要 可以 应该 已经 非常 特别 一起 一个 这个 那个 什么 为什么 怎么 因为 所以 但是 如果 虽然 然后 "
    "天气 下雨 太阳 月亮 山水 花园 音乐 电影 书籍 故事 早上 晚上 吃饭 喝茶 咖啡 水果 苹果 米饭 面条 "
    "快乐 安静 漂亮 重要 简单 困难 开始 结束 帮助 回答 解释 介绍 计算 搜索 结果 函数 参数 调用 工具"
).split()
_TOOLS = [
    ("get_weather", {"city": ["Paris", "Tokyo", "北京", "New York"], "unit": ["celsius", "fahrenheit"]}),
    ("search", {"query": ["tiny models", "中文分词", "chat templates"], "top_k": [1, 3, 5]}),
    ("add", {"a": [1, 2, 17, 42], "b": [3, 8, 100]}),
]
_SYSTEMS = ["You are a helpful assistant.", "你是一个乐于助人的助手。", "Answer briefly."]


def default_corpus() -> list[str]:
    """A deterministic mixed English/Chinese corpus: prose, chat turns, tool calls, reasoning, numbers and code."""
    rng = random.Random(20240601)  # fixed: the corpus (hence the tokenizer) must never change between runs
    lines: list[str] = []
    for _ in range(200):
        sentence = f"{rng.choice(_EN_SUBJECTS)} {rng.choice(_EN_VERBS)} {rng.choice(_EN_OBJECTS)}"
        lines.append(sentence + rng.choice(_EN_TAILS))
        zh = (rng.choice(_ZH_SUBJECTS), rng.choice(_ZH_VERBS), rng.choice(_ZH_OBJECTS), rng.choice(_ZH_TAILS))
        lines.append("".join(zh))
    for _ in range(150):
        words = rng.sample(_EN_WORDS, rng.randint(5, 12))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ";", ":"]))
        lines.append("".join(rng.sample(_ZH_WORDS, rng.randint(3, 8))) + rng.choice(["。", "？", "！", "；"]))
    for i in range(120):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        name, params = _TOOLS[i % len(_TOOLS)]
        arguments = {key: rng.choice(values) for key, values in params.items()}
        call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        lines += [
            f"<|im_start|>system\n{rng.choice(_SYSTEMS)}<|im_end|>\n",
            f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n{a} + {b} = {a + b}.<|im_end|>\n",
            f"<|im_start|>user\n{a} 加 {b} 等于多少？<|im_end|>\n<|im_start|>assistant\n等于 {a + b}。<|im_end|>\n",
            f"<|im_start|>assistant\n<think>\nThe user needs {name}.\n</think>\n\n<tool_call>{call}</tool_call><|im_end|>\n",
            f'<|im_start|>tool\n{{"result": {a * b}, "ok": true}}<|im_end|>\n',
            f"def f_{i}(x):\n    return x * {a} + {b}\n",
            f"- item {i}: {a / (b + 1):.3f}\n  * note: 😀 café naïve\t{b:#x}\n",
        ]
    lines.append("# Tools\nYou may call these functions:\n")
    lines.append('Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>.')
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyDims:
    """What every architecture's config builder receives."""

    vocab_size: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    pad_token_id: int = 0
    eos_token_id: int = 2
    bos_token_id: int | None = None  # the template adds no BOS, so the config names none either

    def common(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
        }

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _qwen2(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(**d.common(), tie_word_embeddings=True)  # tied like Qwen2.5-0.5B/1.5B


def _llama(d: TinyDims) -> PreTrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**d.common(), head_dim=d.head_dim, tie_word_embeddings=False)


def _mistral(d: TinyDims) -> PreTrainedConfig:
    from transformers import MistralConfig

    return MistralConfig(**d.common(), head_dim=d.head_dim, sliding_window=None, tie_word_embeddings=False)


def _qwen3(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen3Config

    # head_dim defaults to 128 in Qwen3 (not hidden/heads), so it must be given.
    return Qwen3Config(**d.common(), head_dim=d.head_dim, tie_word_embeddings=True)


def _gemma(d: TinyDims) -> PreTrainedConfig:
    from transformers import GemmaConfig

    # Gemma (not Gemma2): no logit soft-capping or sliding window, so sdpa is exact. head_dim defaults to 256.
    return GemmaConfig(**d.common(), head_dim=d.head_dim, tie_word_embeddings=True)


def _qwen2_moe(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **d.common(),
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=max(d.intermediate_size // 2, 1),
        shared_expert_intermediate_size=d.intermediate_size,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
    )


def _mixtral(d: TinyDims) -> PreTrainedConfig:
    from transformers import MixtralConfig

    return MixtralConfig(
        **d.common(),
        head_dim=d.head_dim,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=None,
        tie_word_embeddings=False,
    )


# Short name -> config builder. "qwen2" is the default everywhere; the MoE ones are qwen2_moe and mixtral.
ARCHITECTURES: dict[str, Callable[[TinyDims], PreTrainedConfig]] = {
    "qwen2": _qwen2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "qwen2_moe": _qwen2_moe,
    "mixtral": _mixtral,
}


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def build_tiny_model(
    output_dir: str | Path,
    arch: str = "qwen2",
    texts: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype | str = "float32",
) -> Path:
    """Train a tokenizer on `texts` (default: `default_corpus()`), build a randomly initialised `arch` model,
    and save both (safetensors, chat template, generation_config with the end-of-turn ids) to `output_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch {arch!r} is unknown. Choose one of: {', '.join(ARCHITECTURES)}.")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}), "
            f"and num_heads by num_kv_heads ({num_kv_heads})."
        )
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16').")

    tokenizer = train_bpe_tokenizer(default_corpus() if texts is None else texts, vocab_size=vocab_size)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD_TOKEN, EOS_TOKEN])
    dims = TinyDims(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    config = ARCHITECTURES[arch](dims)

    # Seed only around the init so the weights depend on the arguments, and restore the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model = model.to(torch_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=[eos_id, pad_id],  # end of turn first, then end of text
        pad_token_id=pad_id,
        do_sample=False,
    )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

"""The built-in training text for tiny tokenizers: mixed English/Chinese prose, chat turns, tool calls, code.

Deterministic by design (a fixed seed): the corpus, hence every tokenizer trained on it, never changes.
"""

from __future__ import annotations

import json
import random

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

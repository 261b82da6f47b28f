"""Multimodal rows (LLaMA-Factory's `images` / `videos` / `audios`): refused with a reason, never trained as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sftforge.data.formats import MEDIA_KEYS, to_conversation
from sftforge.data.pipeline import TokenizeSpec, build_examples
from sftforge.data.readers import SourceRow
from sftforge.errors import DataError, RowError

# As in LLaMA-Factory's mllm_demo.json: the text points at the media with placeholders
MLLM = {
    "messages": [
        {"role": "user", "content": "<image>Who are they?"},
        {"role": "assistant", "content": "They're Kane and Gretzka from Bayern Munich."},
    ],
    "images": ["mllm_demo_data/1.jpg"],
}
ALPACA = {"instruction": "Describe the clip.", "input": "", "output": "A dog runs."}


@pytest.mark.parametrize("key", MEDIA_KEYS)
def test_a_row_with_media_is_refused_naming_the_key(key: str) -> None:
    for row in ({**ALPACA, key: ["clip.mp4"]}, {**ALPACA, key: "clip.mp4"}):
        with pytest.raises(RowError) as err:
            to_conversation(row, "f.jsonl:1")
        assert err.value.reason == "multimodal_not_supported"
        assert f"`{key}`" in err.value.detail and "text models" in err.value.detail


@pytest.mark.parametrize("empty", [None, [], "", {}])
def test_an_empty_media_key_is_a_text_row(empty: Any) -> None:
    conv = to_conversation({**ALPACA, "images": empty, "audios": empty}, "f.jsonl:1")
    assert [m.content for m in conv.messages] == ["Describe the clip.", "A dog runs."]


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> TokenizeSpec:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenizeSpec.build(tok, tok.chat_template, 256)


def test_the_pipeline_stops_at_the_row_or_counts_it(spec: TokenizeSpec) -> None:
    rows = [SourceRow(ALPACA, "mix.jsonl:1"), SourceRow(MLLM, "mix.jsonl:2")]
    with pytest.raises(
        DataError, match=r"^mix\.jsonl:2: the row carries `images`.*\[multimodal_not_supported\]"
    ):
        build_examples(rows, spec, "error", None, "t")
    examples, stats = build_examples(rows, spec, "skip", None, "t")
    assert [e.source for e in examples] == ["mix.jsonl:1"]
    assert stats.dropped == {"multimodal_not_supported": 1}

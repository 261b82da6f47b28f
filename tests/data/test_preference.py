"""Preference rows → verified token sequences in the store: a pair is two examples with one prompt, only the
answer (and its end-of-turn token) scored; too-long pairs are dropped whole; held-out splits keep pairs whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from sftforge.config import load_config
from sftforge.data.preference import pair_features, process_preference_rows
from sftforge.data.readers import SourceRow
from sftforge.data.rows import TokenizeSpec
from sftforge.train.run import prepare_tokenized_data


@pytest.fixture(scope="module")
def spec(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return lambda kind, max_length=256: TokenizeSpec.build(
        tok, tok.chat_template, max_length, preference=kind
    )


def rows(*items):
    return [SourceRow(r, f"f.jsonl:{i + 1}") for i, r in enumerate(items)]


def test_a_pair_is_two_examples_sharing_the_prompt_with_only_the_answer_scored(spec):
    s = spec("dpo")
    ((status, fmt, pair),) = process_preference_rows(
        s, rows({"prompt": "Hi there", "chosen": "good", "rejected": "bad"})
    )
    assert status == "pair" and fmt == "pref_prompt_chosen_rejected"
    (chosen, _), (rejected, _) = pair.examples
    assert chosen.source == "f.jsonl:1#chosen" and rejected.source == "f.jsonl:1#rejected"
    tok = s.tokenizer
    for example, answer in ((chosen, "good"), (rejected, "bad")):
        scored = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
        assert tok.decode(scored) == answer + "<|im_end|>"  # the answer and its end-of-turn, nothing after it
        assert example.labels[-1] != -100
    prompt_c = chosen.input_ids[: next(i for i, x in enumerate(chosen.labels) if x != -100)]
    prompt_r = rejected.input_ids[: next(i for i, x in enumerate(rejected.labels) if x != -100)]
    assert prompt_c == prompt_r == tok.apply_chat_template([{"role": "user", "content": "Hi there"}],
                                                         add_generation_prompt=True, tokenize=True, return_dict=False)  # fmt: skip


def test_too_long_pairs_are_dropped_whole_and_bad_rows_name_their_line(spec):
    long = {"prompt": "word " * 200, "chosen": "a", "rejected": "b"}
    bad = {"prompt": "x", "chosen": "same", "rejected": "same"}
    (dropped, refused) = process_preference_rows(spec("dpo", 64), rows(long, bad))
    assert dropped[0] == "drop" and dropped[1] == "exceeds_max_length" and dropped[2].length > 64
    assert refused[:2] == ("bad", "pref_identical_answers") and refused[2].startswith("f.jsonl:2: ")


def test_kto_rows_keep_their_rating(spec):
    ok, ko = process_preference_rows(
        spec("kto"),
        rows(
            {"prompt": "q", "completion": "a", "label": True},
            {"prompt": "q", "completion": "b", "label": False},
        ),
    )
    assert ok[2][0].source.endswith("#desirable") and ko[2][0].source.endswith("#undesirable")


def test_the_store_reads_back_as_trls_features_and_holds_out_whole_pairs(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"})
                              for i in range(20)) + "\n")  # fmt: skip
    cfg = load_config(None, ["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data), "--stage",
                             "dpo", "--eval_split_ratio", "0.2", "--output_dir", str(tmp_path / "o")])  # fmt: skip
    bundle, prepared = prepare_tokenized_data(cfg)
    assert len(prepared.train) == 32 and len(prepared.eval) == 8  # 16 + 4 pairs, two examples each
    tok = bundle.tokenizer
    for view in (prepared.train, prepared.eval):
        for i in range(len(view) // 2):
            f = pair_features(view, i)
            c, r = tok.decode(f["chosen_ids"]), tok.decode(f["rejected_ids"])
            n = c.removeprefix("yes ").removesuffix("<|im_end|>")
            assert r == f"no {n}<|im_end|>" and tok.decode(f["prompt_ids"]).endswith(
                f"q{n}<|im_end|>\n<|im_start|>assistant\n"
            )
    assert np.all(prepared.train.index[0::2] % 2 == 0)  # every pair starts at its chosen example


def test_llama_factory_ranking_columns_map_to_pairs(spec):
    """dataset_info.json's ranking entries name their keys with `columns` (alpaca: prompt/query/chosen/rejected;
    sharegpt: messages/chosen/rejected); with stage dpo those columns are read, with stage sft refused."""
    from sftforge.data.columns import compile_columns
    from sftforge.errors import ConfigError

    cmap = compile_columns(
        {"prompt": "q", "query": "i", "chosen": "good", "rejected": "bad"}, None, preference=True
    )
    s = TokenizeSpec.build(
        spec("dpo").tokenizer, spec("dpo").tokenizer.chat_template, 256, preference="dpo", columns=cmap
    )
    ((status, fmt, pair),) = process_preference_rows(
        s, rows({"q": "Do it", "i": "now", "good": "done", "bad": "no"})
    )
    assert (status, fmt) == ("pair", "pref_alpaca")
    assert s.tokenizer.decode([t for t, x in zip(pair.examples[0][0].input_ids, pair.examples[0][0].labels,
                                                 strict=True) if x != -100]) == "done<|im_end|>"  # fmt: skip
    with pytest.raises(ConfigError, match="trains with stage: dpo"):
        compile_columns({"prompt": "q", "response": "a", "chosen": "c"}, None)

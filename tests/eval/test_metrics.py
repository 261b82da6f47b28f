"""Generation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sftforge.eval.metrics import (
    corpus_bleu,
    exact_match,
    generation_metrics,
    length_stats,
    rouge_l,
    tokenize_for_metrics,
)


def test_tokenizer_splits_cjk_per_character_and_punctuation_apart():
    assert tokenize_for_metrics("Hello, 世界!") == ["Hello", ",", "世", "界", "!"]
    assert tokenize_for_metrics("我爱北京。") == ["我", "爱", "北", "京", "。"]
    assert tokenize_for_metrics("moon, river's") == ["moon", ",", "river", "'", "s"]
    assert tokenize_for_metrics("カタカナ abc") == ["カ", "タ", "カ", "ナ", "abc"]
    assert tokenize_for_metrics("  ") == []


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match(" cat moon\n", "cat moon") == 1.0
    assert exact_match("cat  moon", "cat moon") == 0.0
    assert exact_match("Cat", "cat") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("the cat sat", "the cat sat on the mat", 2 * 1.0 * 0.5 / 1.5),  # lcs 3: P 3/3, R 3/6
        ("a b c d", "a c b d", 0.75),  # lcs 3 (a b d): P = R = 3/4
        ("我爱北京", "我爱上海", 0.5),  # per character: lcs 我爱 = 2 of 4
        ("x y", "a b", 0.0),
        ("", "a b", 0.0),
        ("a b", "", 0.0),
        ("", "", 1.0),
    ],
)
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_bleu_identical_is_one_and_empty_is_zero():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert corpus_bleu(["我爱北京天安门"], ["我爱北京天安门"]) == pytest.approx(1.0)
    assert corpus_bleu([""], ["the cat"]) == 0.0
    assert corpus_bleu(["x y z w"], ["a b c d"]) == 0.0


def test_bleu_by_hand():
    # p1 4/5, p2 3/4, p3 2/3, p4 1/2; same length: no brevity penalty
    assert corpus_bleu(["a b c d e"], ["a b c d f"]) == pytest.approx((0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25)
    # no 4-gram match: smoothed to 1 / (2 · 1)
    assert corpus_bleu(["a b c x"], ["a b c y"]) == pytest.approx((0.75 * (2 / 3) * 0.5 * 0.5) ** 0.25)
    # shorter than the reference: brevity penalty exp(1 - 6/4)
    assert corpus_bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(-0.5))
    # two-token answers have no 3- or 4-grams: orders 1 and 2 only
    assert corpus_bleu(["a b"], ["a b"]) == pytest.approx(1.0)
    # Chinese per character: 我爱北京 vs 我爱上海 → p1 2/4, p2 1/3, p3 0/2 → 1/4, p4 0/1 → 1/4
    assert corpus_bleu(["我爱北京"], ["我爱上海"]) == pytest.approx((0.5 * (1 / 3) * 0.25 * 0.25) ** 0.25)


def test_bleu_is_corpus_level():
    # counts are summed over the corpus before the precisions: 1 perfect + 1 empty answer
    both = corpus_bleu(["a b c d", ""], ["a b c d", "e f g h"])
    assert both == pytest.approx(math.exp(1 - 8 / 4))  # all precisions 1, brevity 4 vs 8
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])


def test_length_stats_and_summary():
    assert length_stats([2, 4], [4, 4]) == {
        "pred_tokens_mean": 3.0,
        "ref_tokens_mean": 4.0,
        "length_ratio": 0.75,
    }
    metrics = generation_metrics(["a b", "c"], ["a b", "d"])
    assert metrics["exact_match"] == 0.5
    assert metrics["rouge_l"] == 0.5
    assert 0.0 < metrics["bleu"] < 1.0

"""Generation metrics, pure functions on strings: exact match, ROUGE-L, corpus BLEU-4, length statistics.

Scores are fractions in [0, 1] (the table prints them as percentages). Text is tokenized for the metrics by
`tokenize_for_metrics`: each CJK character is one token (Chinese and Japanese have no spaces between words;
sacrebleu's `zh` tokenizer does the same), other text splits into runs of letters/digits and single punctuation
marks, so "moon," and "moon" share the token "moon"."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

# CJK unified ideographs (+ extension A and compatibility), kana, CJK symbols and punctuation
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def tokenize_for_metrics(text: str) -> list[str]:
    """'Hello, 世界!' → ['Hello', ',', '世', '界', '!']. Case is kept."""
    return _TOKEN.findall(text)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after stripping surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of the metric tokens, P = lcs/|pred|, R = lcs/|ref|,
    F = 2PR/(P+R). Two empty texts score 1.0; one empty text scores 0.0."""
    pred, ref = tokenize_for_metrics(prediction), tokenize_for_metrics(reference)
    if not pred or not ref:
        return float(not pred and not ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (one reference per prediction): clipped n-gram precisions of orders 1..4 summed over the
    corpus, geometric mean, brevity penalty. Smoothing as sacrebleu's default ('exp'): an order with matches
    0 counts as 1 / (2^k · total), k = 1, 2, … for each such order. Orders with no n-grams at all in the
    predictions (every answer shorter than 4 tokens) are left out of the mean instead of zeroing the score
    (sacrebleu's `effective_order`), so short answers still get a meaningful score."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    correct, total = [0] * max_order, [0] * max_order
    pred_len = ref_len = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = tokenize_for_metrics(prediction), tokenize_for_metrics(reference)
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for n in range(1, max_order + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred, n), _ngrams(ref, n)
            correct[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in pred_ngrams.items())
            total[n - 1] += max(len(pred) - n + 1, 0)
    if pred_len == 0 or correct[0] == 0:
        return 0.0
    log_precisions, smooth = [], 1.0
    for hit, count in zip(correct, total, strict=True):
        if count == 0:
            break  # no n-grams of this order (nor higher ones) in the predictions
        if hit == 0:
            smooth *= 2
            log_precisions.append(math.log(1 / (smooth * count)))
        else:
            log_precisions.append(math.log(hit / count))
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def length_stats(prediction_lengths: Sequence[int], reference_lengths: Sequence[int]) -> dict[str, float]:
    """Mean lengths (in model tokens) of predictions and references, and their ratio (total pred / total ref)."""
    n = max(len(prediction_lengths), 1)
    pred, ref = sum(prediction_lengths), sum(reference_lengths)
    return {
        "pred_tokens_mean": pred / n,
        "ref_tokens_mean": ref / max(len(reference_lengths), 1),
        "length_ratio": pred / ref if ref else 0.0,
    }


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """exact_match, rouge_l (means over the examples) and corpus bleu, all in [0, 1]."""
    n = max(len(predictions), 1)
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "bleu": corpus_bleu(predictions, references),
    }

"""Evaluation: loss/perplexity with the training masks, generation metrics, base vs tuned (`sftforge eval`)."""

from sftforge.eval.metrics import corpus_bleu, exact_match, generation_metrics, rouge_l, tokenize_for_metrics

__all__ = ["corpus_bleu", "exact_match", "generation_metrics", "rouge_l", "tokenize_for_metrics"]

"""Best-fit-decreasing packing and the padding-free collator."""

from __future__ import annotations

import random

import pytest
import torch

from sftforge.data.collate import FlatteningCollator, PaddingCollator
from sftforge.data.masking import IGNORE_INDEX
from sftforge.data.packing import best_fit_decreasing, pack_examples, packing_efficiency
from sftforge.train.token_counter import batch_token_counts


def test_bfd_bins_respect_capacity_and_keep_every_item():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Best fit decreasing is within 11/9 OPT + 1; the simple lower bound is total/capacity.
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128) + 2


def test_bfd_picks_the_tightest_bin():
    # 60 goes into the bin with 70 free (after 58), not the one with 100 free.
    assert best_fit_decreasing([100, 58, 60], 128) == [[0], [1, 2]] or best_fit_decreasing(
        [100, 58, 60], 128
    ) == [
        [0],
        [2, 1],
    ]
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing([200], 128)


def test_pack_examples_concatenates_and_records_lengths():
    feats = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([5, 3, 7, 2])]
    rows = pack_examples(feats, 8)
    assert sum(sum(r["seq_lens"]) for r in rows) == 17
    assert all(len(r["input_ids"]) == sum(r["seq_lens"]) <= 8 for r in rows)
    assert packing_efficiency(rows, 8) == pytest.approx(17 / (8 * len(rows)))


def test_flattening_collator_restarts_positions_and_ignores_first_labels():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lens": [2, 3]},
            {"input_ids": [6, 7], "labels": [IGNORE_INDEX, 7]}]  # fmt: skip
    collator = FlatteningCollator()
    batch = collator(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, IGNORE_INDEX, 4, 5, IGNORE_INDEX, 7]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 5, 7] and batch["max_length_q"] == 3
    assert batch_token_counts(batch) == (7, 7, 2 * 2 + 3 * 3 + 2 * 2)


def test_padding_collator_counts_padding():
    collator = PaddingCollator(0, 8)
    batch = collator([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum() == 4
    assert batch_token_counts(batch) == (4, 16, 3 * 3 + 1 * 1)
    assert torch.equal(batch["labels"][1, 1:], torch.full((7,), IGNORE_INDEX))

"""The bucket layout the FlatteningCollator puts in a batch for sftforge_varlen."""

from __future__ import annotations

import pickle

import torch

from sftforge.data.buckets import LAYOUT_KEY, bucket_layout, plan_buckets
from sftforge.data.collate import FlatteningCollator


def test_layout_grids_hold_each_sample_once_padded_with_its_first_token():
    lengths = [3, 200, 7, 150, 64, 180, 20]
    layout = bucket_layout(lengths)
    gather, slot_of_token, shapes = layout["gather"], layout["slot_of_token"], layout["shapes"]
    assert len(shapes) == len(plan_buckets(lengths)) >= 3
    assert all(isinstance(s, int) and isinstance(m, int) for s, m in shapes)  # no device read to use them
    assert gather.numel() == sum(s * m for s, m in shapes) and gather.dtype == torch.long
    assert torch.equal(gather[slot_of_token], torch.arange(sum(lengths)))  # every token finds its own slot
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    base, seen = 0, []
    for samples, longest in shapes:
        rows = gather[base : base + samples * longest].view(samples, longest)
        for row in rows:
            start = int(row[0])
            sample = starts.index(start)
            n = lengths[sample]
            assert row[:n].tolist() == list(range(start, start + n)) and (row[n:] == start).all()
            assert n <= longest
            seen.append(sample)
        base += samples * longest
    assert sorted(seen) == list(range(len(lengths)))


def test_collator_carries_the_layout_only_when_asked():
    feats = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    batch = FlatteningCollator()(feats)
    assert torch.equal(batch[LAYOUT_KEY]["gather"], bucket_layout([3, 2])["gather"])
    assert LAYOUT_KEY not in FlatteningCollator(bucket_layout=False)(
        feats
    )  # flash-attn needs only cu_seq_lens


def test_layout_survives_a_dataloader_worker_hop():
    """DataLoader workers pickle the batch; the tensors and the int shapes come back intact."""
    layout = bucket_layout([5, 9, 2])
    again = pickle.loads(pickle.dumps(layout))
    assert again["shapes"] == layout["shapes"] and torch.equal(again["gather"], layout["gather"])

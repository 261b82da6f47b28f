"""The token store: exact round trips, views, shards appended, packing over index arrays, and every process of a
machine reading the one store the local main process wrote."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sftforge.data.masking import IGNORE_INDEX
from sftforge.data.packing import pack_examples, pack_lengths
from sftforge.data.rows import Example
from sftforge.data.store import ExampleView, StoreWriter, TokenStore, write_split
from sftforge.data.train_sets import ExampleDataset, PackedDataset


def random_examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(1, 300)
        ids = [rng.randint(0, 150_000) for _ in range(length)]  # beyond 16 bits: int32 must hold them
        labels = [t if rng.random() < 0.4 else IGNORE_INDEX for t in ids]
        source = rng.choice(["data/a.jsonl", "数据/训练.json", "x.parquet"]) + f":{i + 1}"
        out.append(Example(ids, labels, source))
    return out


def test_a_split_round_trips_exactly(tmp_path: Path) -> None:
    examples = random_examples(2_000)
    sizes = write_split(tmp_path, "train", examples)
    store = TokenStore(tmp_path, "train", sizes)
    assert len(store) == 2_000 and sizes["tokens"] == sum(len(e.input_ids) for e in examples)
    assert [store.example(i) for i in range(len(store))] == examples
    assert store.lengths.tolist() == [len(e.input_ids) for e in examples]
    assert store.counts.tolist() == [sum(x != IGNORE_INDEX for x in e.labels) for e in examples]
    # The files are what meta.json's checksums say
    for name, digest in sizes["checksums"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest


def test_writes_are_buffered_yet_exact_across_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sftforge.data.store as store_mod

    monkeypatch.setattr(store_mod, "_FLUSH_TOKENS", 50)  # a flush every example or so
    examples = random_examples(300, seed=1)
    store = TokenStore(tmp_path, "s", write_split(tmp_path, "s", examples))
    assert list(ExampleView.of(store)) == examples


def test_a_store_pickles_as_its_folder_not_its_arrays(tmp_path: Path) -> None:
    import pickle

    examples = random_examples(400, seed=6)
    store = TokenStore(tmp_path, "train", write_split(tmp_path, "train", examples))
    blob = pickle.dumps(ExampleDataset(ExampleView.of(store)))
    assert len(blob) < 20_000  # index arrays only; the tokens stay in the files
    again = pickle.loads(blob)
    assert [again[i]["input_ids"] for i in range(len(again))] == [e.input_ids for e in examples]


def test_an_empty_split_opens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, "eval", write_split(tmp_path, "eval", []))
    assert len(store) == 0 and len(ExampleView.of(store)) == 0


def test_a_label_other_than_its_token_is_refused(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path, "train")
    writer.add([1, 2, 3], [1, -100, 3], "f.jsonl:1")
    writer.add(
        [4, 5], [4, 6], "f.jsonl:2"
    )  # checked in bulk when the buffer is written: before close() returns
    writer.add([7], [-100], "f.jsonl:3")
    with pytest.raises(ValueError, match="f.jsonl:2: a label differs from its token id"):
        writer.close()
    writer.abort()
    writer = StoreWriter(tmp_path, "eval")
    with pytest.raises(ValueError, match="f.jsonl:9: 2 token ids but 1 labels"):
        writer.add([1, 2], [1], "f.jsonl:9")
    writer.abort()


def test_appended_shards_equal_one_store(tmp_path: Path) -> None:
    examples = random_examples(500, seed=2)
    parts = [examples[:0], examples[:123], examples[123:124], examples[124:]]
    writer = StoreWriter(tmp_path / "whole", "train")
    writer.add(examples[0].input_ids, examples[0].labels, examples[0].source)  # something before the shards
    for k, part in enumerate(parts):
        folder = tmp_path / f"shard{k}"
        write_split(folder, "shard", part)
        writer.append_split(folder, "shard")
    sizes = writer.close()
    assert list(ExampleView.of(TokenStore(tmp_path / "whole", "train", sizes))) == [examples[0], *examples]
    one = write_split(tmp_path / "one", "train", [examples[0], *examples])
    assert sizes["checksums"] == one["checksums"]  # byte for byte the same files


def test_views_pick_subset_repeat_and_read_like_lists(tmp_path: Path) -> None:
    a, b = random_examples(50, seed=3), random_examples(30, seed=4)
    sa = TokenStore(tmp_path / "a", "t", write_split(tmp_path / "a", "t", a))
    sb = TokenStore(tmp_path / "b", "t", write_split(tmp_path / "b", "t", b))
    view = ExampleView([sa, sb], np.array([1, 0, 1, 1]), np.array([5, 49, 5, 0]))
    assert list(view) == [b[5], a[49], b[5], b[0]]
    assert view.lengths.tolist() == [len(e.input_ids) for e in view]
    assert view[-1] == b[0] and view[1:3] == [a[49], b[5]]
    assert view.subset(np.array([3, 0])) == [b[0], b[5]]
    assert view + [a[0]] == [b[5], a[49], b[5], b[0], a[0]]


def test_the_training_datasets_read_the_store(tmp_path: Path) -> None:
    examples = random_examples(200, seed=5)
    view = ExampleView.of(TokenStore(tmp_path, "t", write_split(tmp_path, "t", examples)))
    plain = ExampleDataset(view)
    assert plain[7] == {"input_ids": examples[7].input_ids, "labels": examples[7].labels,
                        "sources": [examples[7].source]}  # fmt: skip
    # Packing from index lists equals packing copied feature lists (the in-memory reference)
    features = [{**e.as_features(), "sources": [e.source]} for e in examples]
    reference = pack_examples(features, 512)
    packed = PackedDataset(view, pack_lengths(view.lengths, 512))
    assert [packed[r] for r in range(len(packed))] == reference
    assert packed.fill(512) == pytest.approx(
        sum(len(r["input_ids"]) for r in reference) / (512 * len(reference))
    )


@pytest.mark.parametrize(("n", "batch"), [(1, 8), (37, 4), (5_000, 8), (20_011, 2)])
def test_length_grouped_order_equals_transformers_sampler(n: int, batch: int) -> None:
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from sftforge.data.train_sets import LengthGroupedIndexSampler

    lengths = np.random.default_rng(n).integers(1, 60, n)  # many ties: stability matters
    torch.manual_seed(3)
    expected = get_length_grouped_indices(lengths.tolist(), batch)
    torch.manual_seed(3)
    assert list(LengthGroupedIndexSampler(lengths, batch)) == expected


def _reference_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """The straightforward list-based algorithm packing used before index arrays: the oracle."""
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - lengths[i], b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - lengths[i], len(bins) - 1))
    return bins


@pytest.mark.parametrize("capacity", [8, 100, 512, 4096])
def test_index_packing_equals_the_list_algorithm(capacity: int) -> None:
    from sftforge.data.packing import best_fit_decreasing

    rng = random.Random(capacity)
    for _ in range(20):
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 2_000))]
        expected = _reference_best_fit_decreasing(lengths, capacity)
        assert best_fit_decreasing(lengths, capacity) == expected
        rows = pack_lengths(lengths, capacity)
        # Rows fullest first (stable), members in data order: the same bins as the reference
        totals = [sum(lengths[i] for i in b) for b in expected]
        order = sorted(range(len(expected)), key=lambda b: -totals[b])
        assert [rows.row(r).tolist() for r in range(len(rows))] == [sorted(expected[b]) for b in order]


RANK_SCRIPT = """
import hashlib, json, os, sys
import torch.distributed as dist
from transformers import AutoTokenizer
from sftforge.config.schema import DataArguments
from sftforge.data.pipeline import TokenizeSpec, prepare_data
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE
from sftforge.train.preprocess_once import run_once_per_machine

dist.init_process_group("gloo")
model, data_file, cache, out = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(model)
data = DataArguments(train_data_path=[data_file], cache_dir=cache, eval_split_ratio=0.2)
spec = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, data.max_length)
prepared = run_once_per_machine(lambda: prepare_data(data, spec, seed=0))
h = hashlib.sha256()
for view in (prepared.train, prepared.eval):
    for i in range(len(view)):
        h.update(view.token_ids(i).tobytes() + view.labels(i).tobytes() + view.source(i).encode())
folders = sorted({str(s.folder) for s in prepared.train.stores})
# One file per rank: the ranks share one stdout, where their lines could interleave
with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({"rank": dist.get_rank(), "state": prepared.cache.state, "folders": folders,
               "digest": h.hexdigest(), "n": len(prepared.train)}, f)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_every_rank_reads_the_one_store_the_local_main_wrote(
    tmp_path: Path, tiny_model_dir: Path, data_file: Path
) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(script), str(tiny_model_dir), str(data_file), str(tmp_path / "cache"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["state"] for r in results] == [
        "stored",
        "hit",
    ]  # rank 0 tokenized, rank 1 only opened the store
    assert results[0]["folders"] == results[1]["folders"] and len(results[0]["folders"]) == 1
    assert results[0]["digest"] == results[1]["digest"] and results[0]["n"] > 0

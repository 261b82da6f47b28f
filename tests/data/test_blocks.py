"""Pretraining blocks (data/blocks.py) and the pt data stage (data/pretrain.py): every corpus token lands in
exactly one block, documents end with eos, isolation records the documents' pieces, .txt files split as asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.config.schema import DataArguments
from sftforge.data.blocks import build_blocks, truncate_documents
from sftforge.data.pretrain import prepare_pretrain_data, resolve_stage
from sftforge.data.readers import iter_rows, resolve_data_files
from sftforge.errors import DataError

DOCS = [[1, 2, 3, 9], [4, 5, 9], [6, 7, 8, 10, 11, 9], [12, 9]]  # 15 tokens, 9 = eos


def test_blocks_cover_every_token_once_in_order():
    blocks, stats = build_blocks(DOCS, 4)
    assert [b.input_ids for b in blocks] == [[1, 2, 3, 9], [4, 5, 9, 6], [7, 8, 10, 11], [9, 12, 9]]
    assert all(b.labels == b.input_ids for b in blocks)  # every token trained
    assert stats.corpus_tokens == stats.block_tokens == 15 and stats.coverage == 1.0
    assert all(b.seq_lens is None and "seq_lens" not in b.as_features() for b in blocks)


def test_drop_last_block_drops_only_the_partial_tail():
    blocks, stats = build_blocks(DOCS, 4, drop_last=True)
    assert len(blocks) == 3 and stats.dropped_tokens == 3 and stats.block_tokens == 12
    blocks, stats = build_blocks(
        DOCS[:1], 4, drop_last=True
    )  # a stream that fills whole blocks loses nothing
    assert len(blocks) == 1 and stats.dropped_tokens == 0


def test_isolation_records_document_pieces():
    blocks, _ = build_blocks(DOCS, 4, isolate=True, sources=["a:1", "a:2", "a:3", "a:4"])
    assert [b.seq_lens for b in blocks] == [[4], [3, 1], [4], [1, 2]]
    assert all(sum(b.seq_lens) == len(b.input_ids) for b in blocks)
    assert blocks[1].source == "a:2 (+1 more)" and blocks[0].source == "a:1"
    assert blocks[1].as_features()["seq_lens"] == [3, 1]


def test_isolated_blocks_collate_with_restarting_positions():
    from sftforge.data.collate import FlatteningCollator

    blocks, _ = build_blocks(DOCS, 4, isolate=True)
    batch = FlatteningCollator(bucket_layout=False)([blocks[1].as_features()])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4]


def test_truncate_documents_counts_what_is_cut():
    rows, stats = truncate_documents(DOCS, 3)
    assert [r.input_ids for r in rows] == [[1, 2, 3], [4, 5, 9], [6, 7, 8], [12, 9]]
    assert stats.truncated == 2 and stats.dropped_tokens == 4 and stats.block_tokens == 11


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        build_blocks(DOCS, 0)


# ---------------------------------------------------------------- .txt files


def test_txt_documents_line_blank_line_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("first line\nsecond line\n\nthird\n\n\nfourth\n", encoding="utf-8")
    by_line = [r.row["text"] for r in iter_rows(f)]
    assert by_line == ["first line", "second line", "third", "fourth"]
    blocks = list(iter_rows(f, "body", "blank_line"))
    assert [r.row["body"] for r in blocks] == ["first line\nsecond line", "third", "fourth"]
    assert [r.source.rsplit(":", 1)[1] for r in blocks] == ["1", "4", "7"]
    assert [r.row["text"] for r in iter_rows(f, txt_documents="file")] == [f.read_text()]


def test_txt_files_are_data_only_for_pretraining(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    assert [p.name for p in resolve_data_files(tmp_path)] == ["b.jsonl"]  # a LICENSE.txt is no SFT data
    assert [p.name for p in resolve_data_files(tmp_path, text_files=True)] == ["a.txt", "b.jsonl"]
    with pytest.raises(DataError, match=r"\.txt: with stage: pt"):
        resolve_data_files(tmp_path / "a.txt")


# ---------------------------------------------------------------- the pt data stage


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _corpus(tmp_path: Path, n: int = 40) -> Path:
    f = tmp_path / "docs.jsonl"
    rows = [
        {"body": f"Document {i} says the lake number {i} is " + "very " * (i % 7) + "calm."} for i in range(n)
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return f


def test_pretrain_stage_trains_every_corpus_token(tmp_path, tokenizer):
    f = _corpus(tmp_path)
    data = DataArguments(
        train_data_path=[str(f)], stage="pt", text_column="body", packing=True, max_length=32
    )
    prepared = prepare_pretrain_data(data, tokenizer, seed=0)
    blocks = prepared.blocks
    texts = [json.loads(line)["body"] for line in f.read_text().splitlines()]
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # + eos
    assert blocks.corpus_tokens == expected == blocks.block_tokens
    assert prepared.train_stats.trained_tokens == expected and blocks.documents == 40
    assert all(len(b.input_ids) == 32 for b in prepared.train[:-1])
    stream = [t for b in prepared.train for t in b.input_ids]
    assert stream.count(tokenizer.eos_token_id) == 40  # one eos after each document
    assert tokenizer.decode(stream).startswith(texts[0] + tokenizer.eos_token + texts[1])


def test_pretrain_holdout_is_by_document(tmp_path, tokenizer):
    f = _corpus(tmp_path)
    data = DataArguments(
        train_data_path=[str(f)],
        stage="pt",
        text_column="body",
        packing=True,
        max_length=32,
        eval_split_ratio=0.1,
    )
    prepared = prepare_pretrain_data(data, tokenizer, seed=0)
    assert prepared.blocks.documents == 36
    assert sum(len(b.input_ids) for b in prepared.eval) > 0  # the 4 held-out documents, in their own blocks


def test_pretrain_bad_rows_name_the_column(tmp_path, tokenizer):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "fine"}\n{"content": "wrong column"}\n')
    data = DataArguments(train_data_path=[str(f)], stage="pt", packing=True, max_length=16)
    with pytest.raises(DataError, match=r"d\.jsonl:2: the row has no 'text' field.*text_column"):
        prepare_pretrain_data(data, tokenizer, seed=0)


def test_stage_auto_detects_documents(tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "a"}\n{"text": "b"}\n')
    chats = tmp_path / "c.jsonl"
    chats.write_text(
        '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
    )
    txt = tmp_path / "t.txt"
    txt.write_text("plain\n")
    for path, stage in ((docs, "pt"), (chats, "sft"), (txt, "pt")):
        data = DataArguments(train_data_path=[str(path)], stage="auto")
        assert resolve_stage(data, set()) == stage
        assert data.packing is (stage == "pt")
    data = DataArguments(train_data_path=[str(docs)], stage="auto", packing=False)
    assert resolve_stage(data, {"packing"}) == "pt" and data.packing is False  # the user's pack: false stays


def test_c4_sft_path_loses_long_documents_pt_keeps_them(shared_data, tokenizer):
    """The before/after of stage pt on the shipped c4 sample at 512 tokens: as SFT `text` rows, documents longer than
    max_length are dropped; as pretraining blocks, every token is trained."""
    from sftforge.data.pipeline import TokenizeSpec, prepare_data

    c4 = str(shared_data / "c4_demo.jsonl")
    pt = prepare_pretrain_data(
        DataArguments(train_data_path=[c4], stage="pt", packing=True, max_length=512), tokenizer, seed=0
    )
    assert pt.blocks.coverage == 1.0 and pt.blocks.corpus_tokens == pt.train_stats.trained_tokens
    sft_args = DataArguments(  # max_dropped_fraction: 1.0 — losing the long documents is what is measured here
        train_data_path=[c4], max_length=512, preprocessing_cache=False, dataset_num_proc=1,
        max_dropped_fraction=1.0,
    )  # fmt: skip
    spec = TokenizeSpec.build(tokenizer, tokenizer.chat_template, 512)
    sft = prepare_data(sft_args, spec, seed=0)
    kept = sft.train_stats.trained_tokens / pt.blocks.corpus_tokens
    assert kept < 0.5, kept  # most of the corpus is in documents longer than 512 tokens


def test_pretrain_documents_are_cached_blocks_are_not(tmp_path, tokenizer):
    f = _corpus(tmp_path)
    args = dict(
        train_data_path=[str(f)], stage="pt", text_column="body", packing=True, cache_dir=str(tmp_path / "c")
    )
    first = prepare_pretrain_data(DataArguments(**args, max_length=32), tokenizer, seed=0)
    again = prepare_pretrain_data(DataArguments(**args, max_length=32), tokenizer, seed=0)
    assert (first.cache.state, again.cache.state) == ("stored", "hit")
    assert [b.input_ids for b in again.train] == [b.input_ids for b in first.train]
    assert again.train_stats.kept == 40 and again.blocks.corpus_tokens == first.blocks.corpus_tokens
    other = prepare_pretrain_data(
        DataArguments(**args, max_length=16, eval_split_ratio=0.1), tokenizer, seed=0
    )
    assert (
        other.cache.state == "hit" and len(other.eval) > 0
    )  # new blocks and hold-out from the same documents
    fewer = prepare_pretrain_data(DataArguments(**args, max_length=32, max_samples=3), tokenizer, 0)
    assert fewer.cache.state == "stored"  # another input (max_samples), another entry


@pytest.mark.parametrize("block_size", [1, 3, 4, 7, 64])
@pytest.mark.parametrize("options", [{}, {"drop_last": True}, {"isolate": True}, {"pack": False}])
def test_blocks_read_from_the_token_store_equal_the_list_blocks(tmp_path, block_size, options):
    """Training reads blocks from the documents' token store (BlockView); they are the list-built blocks."""
    import random

    from sftforge.data.blocks import BlockView
    from sftforge.data.rows import Example
    from sftforge.data.store import ExampleView, TokenStore, write_split

    rng = random.Random(block_size)
    docs = [[rng.randint(1, 500) for _ in range(rng.randint(1, 20))] + [9] for _ in range(60)]
    sources = [f"c.txt:{i + 1}" for i in range(len(docs))]
    folder = tmp_path / str(len(options))
    store = TokenStore(
        folder,
        "train",
        write_split(folder, "train", [Example(d, d, s) for d, s in zip(docs, sources, strict=True)]),
    )
    view = ExampleView.of(store).subset(
        list(range(0, 60, 2)) + list(range(1, 60, 2))
    )  # a reordered subset too
    ordered_docs = [docs[i] for i in view.index.tolist()]
    ordered_sources = [sources[i] for i in view.index.tolist()]
    if options.get("pack") is False:
        expected, stats = truncate_documents(ordered_docs, block_size, ordered_sources)
        blocks = BlockView(view, block_size, packing=False)
    else:
        expected, stats = build_blocks(ordered_docs, block_size, sources=ordered_sources, **options)
        blocks = BlockView(view, block_size, packing=True, **options)
    assert list(blocks) == expected
    got = blocks.stats
    assert (got.documents, got.corpus_tokens, got.block_tokens, got.dropped_tokens, got.truncated) == (
        stats.documents, stats.corpus_tokens, stats.block_tokens, stats.dropped_tokens, stats.truncated
    )  # fmt: skip
    assert got.blocks == len(expected) and blocks.lengths.tolist() == [len(b.input_ids) for b in expected]

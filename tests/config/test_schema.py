"""The training keys are read without torch, from a section equal to the real SFTTrainingArguments."""

from __future__ import annotations

import pickle

from sftforge.config import schema, snapshot
from sftforge.config.training_args import SFTTrainingArguments
from sftforge.config.training_args_snapshot import TRANSFORMERS_VERSION


def test_the_torch_free_training_section_equals_the_real_arguments():
    assert snapshot.describe(schema.TrainingSection) == snapshot.describe(SFTTrainingArguments)
    assert (
        schema.SECTIONS["training"] is schema.TrainingSection
    )  # the snapshot fits the installed transformers


def test_another_transformers_version_reads_the_real_class():
    assert schema.training_schema(TRANSFORMERS_VERSION) is schema.TrainingSection
    assert schema.training_schema("4.0.0") is SFTTrainingArguments


def test_sft_training_arguments_is_still_found_where_it_was():
    import sftforge.config

    assert schema.SFTTrainingArguments is SFTTrainingArguments
    assert sftforge.config.SFTTrainingArguments is SFTTrainingArguments
    # training_args.bin files (the Trainer pickles its arguments) written when the class lived in schema.py
    args = SFTTrainingArguments(output_dir="out", report_to="none")
    old = pickle.dumps(args, protocol=0).replace(
        b"sftforge.config.training_args\n", b"sftforge.config.schema\n"
    )
    assert b"sftforge.config.schema\n" in old
    assert pickle.loads(old).output_dir == "out"

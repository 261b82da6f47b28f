"""The torch-free snapshot of TrainingArguments equals the installed transformers' class, and its generator
reproduces it."""

from __future__ import annotations

import sys
import types

import transformers

from sftforge.config import snapshot
from sftforge.config.training_args_snapshot import TRANSFORMERS_VERSION, TrainingArgumentsSnapshot

REGENERATE = "the snapshot is out of date: run `python src/sftforge/config/snapshot.py` and commit the result"


def test_snapshot_equals_the_installed_training_arguments():
    assert transformers.__version__ == TRANSFORMERS_VERSION, REGENERATE
    assert snapshot.describe(TrainingArgumentsSnapshot) == snapshot.describe(
        transformers.TrainingArguments
    ), REGENERATE


def test_the_generator_reproduces_the_live_fields(monkeypatch):
    source = snapshot.render(transformers.TrainingArguments, transformers.__version__)
    module = types.ModuleType("regenerated_snapshot")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses resolves annotations through it
    exec(compile(source, "regenerated_snapshot.py", "exec"), module.__dict__)
    regenerated = getattr(module, snapshot.SNAPSHOT_CLASS)
    assert snapshot.describe(regenerated) == snapshot.describe(transformers.TrainingArguments)
    assert transformers.__version__ == module.TRANSFORMERS_VERSION

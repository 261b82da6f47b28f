"""The real training arguments: transformers.TrainingArguments with sftforge's keys. Imports torch (seconds), so
only code that trains imports this module; help and config checks read config/schema.py's TrainingSection."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from sftforge.config.schema import SFTTrainingKeys


@dataclass
class SFTTrainingArguments(SFTTrainingKeys, TrainingArguments):
    """Every `transformers.TrainingArguments` field works; a few defaults suit SFT better (SFTTrainingKeys)."""

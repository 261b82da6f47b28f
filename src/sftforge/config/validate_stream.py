"""Checks for `streaming: true`: the training rows are read while training, so nothing that needs the whole
training set up front (its length, a held-out split, lengths for grouping) can work.

Run by `check_and_resolve` after the generic data checks (which may set eval_strategy: epoch).
"""

from __future__ import annotations

from typing import Any


def check_streaming(
    data: dict[str, Any], train: dict[str, Any], explicit: set[str], problems: list[str]
) -> list[str]:
    if not data.get("streaming"):
        return []
    notes: list[str] = []
    if (train.get("max_steps") or -1) <= 0:
        problems.append(
            "max_steps: streaming reads the rows while training and never knows how many there are, so it needs "
            "the number of optimizer steps: set max_steps (e.g. --max_steps 10000); epochs are not counted."
        )
    if data.get("eval_split_ratio", 0.0) > 0:
        problems.append(
            "eval_split_ratio: a held-out split needs the whole training set, which streaming never holds; give "
            "evaluation rows with eval_data_path (read as usual, not streamed) or set eval_split_ratio: 0."
        )
    strategy = train.get("train_sampling_strategy", "random")
    if strategy in ("group_by_length", "batch_rebalance"):
        problems.append(
            f"train_sampling_strategy: {strategy} (group_by_length) needs every example's length up front, which "
            "streaming does not have; use random (shuffled within each streaming_buffer window) or sequential."
        )
    if (train.get("dataloader_num_workers") or 0) > 0:
        problems.append(
            "dataloader_num_workers: streaming reads and tokenizes in the training process (its position must "
            "follow the trained batches exactly); set dataloader_num_workers: 0."
        )
    if data.get("streaming_buffer", 1000) < 1:
        problems.append("streaming_buffer: must be at least 1 row (1000 is a good start).")
    if data.get("stage") == "pt":
        problems.append("streaming: stage pt is not streamed yet; set streaming: false for pretraining.")
    if data.get("datasets"):
        problems.append(
            "datasets: a mix of several sources is planned over their tokenized stores and is not streamed; list "
            "the files in train_data_path to stream them one after another, or set streaming: false (the token "
            "store keeps memory flat for large data too)."
        )
    if str(train.get("eval_strategy", "no")) == "epoch":
        if "eval_strategy" in explicit:
            problems.append(
                "eval_strategy: epoch never comes with streaming (the stream has no end); use eval_strategy: "
                "steps with eval_steps."
            )
        else:  # the generic default for runs with eval data
            train["eval_strategy"] = "steps"
            notes.append(
                "eval_strategy: steps (streaming has no epochs; eval_steps defaults to logging_steps)"
            )
    # The stream restarts from the position in the checkpoint; the Trainer must not also skip batches itself.
    train["ignore_data_skip"] = True
    return notes

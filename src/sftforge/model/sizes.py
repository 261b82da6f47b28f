"""Sizes of parameters that DeepSpeed ZeRO-3 may have partitioned.

Under ZeRO-3 (with `zero3_init_flag`) every rank holds only a slice of each weight and `p.shape` is empty; DeepSpeed
keeps the full size in `ds_shape` / `ds_numel`. Anything that reads a model's size goes through here.
"""

from __future__ import annotations

from typing import Any


def full_numel(param: Any) -> int:
    return int(getattr(param, "ds_numel", None) or param.numel())


def full_shape(param: Any) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", None) or param.shape)

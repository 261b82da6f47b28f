"""`sftforge plan`: GPU memory of a fine-tuning run per distributed strategy, from the model config alone.

Pure arithmetic (`shape`, `activations`, `memory`) on a config dict; `command` reads the config and prints.
"""

from sftforge.plan.memory import (
    PRECISIONS,
    STRATEGIES,
    ModelStates,
    Plan,
    PlanInputs,
    Row,
    make_plan,
    model_states,
    strategy_row,
)
from sftforge.plan.shape import ModelShape, lora_params, parameter_tensors, shape_from_config, total_params

__all__ = [
    "PRECISIONS",
    "STRATEGIES",
    "ModelShape",
    "ModelStates",
    "Plan",
    "PlanInputs",
    "Row",
    "lora_params",
    "make_plan",
    "model_states",
    "parameter_tensors",
    "shape_from_config",
    "strategy_row",
    "total_params",
]

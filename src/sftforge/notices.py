"""Library notices that say nothing to an sftforge user, printed on every run (and by every process of a
multi-process run). Each is dropped by its exact text at the logger that emits it; every other message of those
loggers still shows. Installed when the package is imported: they are emitted while transformers and DeepSpeed
are imported, before any sftforge code runs. Only `logging` is imported here (data workers start without torch).
"""

from __future__ import annotations

import logging

# logger name → messages dropped (exact text)
DROPPED: dict[str, tuple[str, ...]] = {
    # DeepSpeed (imported by accelerate on every run) detects its accelerator on import. On a machine without a
    # visible GPU it warns; sftforge's start-up summary already says "no GPU" and what it decided because of it.
    "DeepSpeed": (
        "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    ),
    # bitsandbytes fetches a CPU kernel through `kernels` when transformers imports it; offline (HF_HUB_OFFLINE),
    # `kernels` says it skipped a check for that kernel. sftforge never uses it (4-bit QLoRA needs a GPU).
    "kernels._internals.hf_hub": (
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
        "Hub is in offline mode.",
    ),
}


class DropExact(logging.Filter):
    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def silence_library_notices() -> None:
    """Idempotent: a logger gets one DropExact however often this runs."""
    for name, messages in DROPPED.items():
        logger = logging.getLogger(name)  # the library's own logger once it is imported (same object)
        if not any(isinstance(f, DropExact) for f in logger.filters):
            logger.addFilter(DropExact(messages))
    # transformers imports peft, which imports bitsandbytes when installed; on CPUs without its optional
    # `kernels` package bitsandbytes warns at import about a faster kernel it cannot use.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

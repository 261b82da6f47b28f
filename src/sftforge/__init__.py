"""sftforge: supervised fine-tuning of open LLMs on the Hugging Face stack."""

import logging as _logging

# transformers imports peft, which imports bitsandbytes when installed; on CPUs without its optional `kernels`
# package bitsandbytes warns at import about a faster kernel it cannot use. Irrelevant to users: keep it quiet.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)

__version__ = "0.1.0"

"""sftforge: supervised fine-tuning of open LLMs on the Hugging Face stack."""

from sftforge.notices import silence_library_notices as _silence_library_notices

# Before transformers, DeepSpeed or bitsandbytes is imported: their import-time notices (sftforge/notices.py)
_silence_library_notices()

__version__ = "0.1.0"

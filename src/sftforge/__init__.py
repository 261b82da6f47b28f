"""sftforge: supervised fine-tuning of open LLMs on the Hugging Face stack."""

__version__ = "0.1.0"

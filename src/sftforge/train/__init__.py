"""Training on transformers.Trainer: a thin subclass, callbacks and the run orchestration."""

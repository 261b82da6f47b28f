"""What a run leaves behind: the Hugging Face folder, metrics, loss plot, model card."""

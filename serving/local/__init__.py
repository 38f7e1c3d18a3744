"""The in-process engine: Hugging Face transformers with continuous batching."""

"""tunelab: fine-tune open language models on your own data and prove whether it paid off."""

__version__ = "0.1.0"

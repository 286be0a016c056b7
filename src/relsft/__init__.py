"""relsft: supervised fine-tuning of a small causal LM to extract character relations
from Chinese novel text, shipped as a reproducible pipeline (see README.md)."""

__version__ = "0.1.0"

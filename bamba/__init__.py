"""Bamba (hybrid Mamba2 + attention) with interchangeable Triton SSD chunking strategies."""

__version__ = "0.1.0"

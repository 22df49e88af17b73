"""GPTScore for kernel studies: score generated outputs against references with a scorer LM,
aggregate with confidence intervals and compare strategies with paired tests."""

__version__ = "0.1.0"

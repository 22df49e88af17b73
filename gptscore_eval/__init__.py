"""GPTScore for kernel studies: score generated outputs against references with a scorer LM,
aggregate with confidence intervals and compare strategies with paired tests."""

__version__ = "0.1.0"

from gptscore_eval.gptscore import gptscore  # noqa: E402  (no torch: cheap)

# Imported on first use: they load torch and transformers, which the other commands don't need.
_LAZY = {"GPTScorer": "gptscore_eval.scorer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gptscore_eval' has no attribute {name!r}")

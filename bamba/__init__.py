"""Bamba with interchangeable Triton chunking strategies for its Mamba2 SSD scan."""
from .ssd import STRATEGIES, ssd, ssd_step  # noqa: F401
from .kernels.conv1d import causal_conv1d, causal_conv1d_update  # noqa: F401

# The model and generation load on first use: kernel users need not import them.
_LAZY = {"BambaForCausalLM": "modeling_bamba", "BambaConfig": "modeling_bamba",
         "generate": "generation", "Generation": "generation"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

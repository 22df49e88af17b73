"""Triton kernels for Bamba's Mamba2 layers (SSD scan, one-token step, causal conv1d).

Without a CUDA device the kernels run under the Triton interpreter. The switch must be
set before any ``@triton.jit`` function is defined, so it happens here, at package import,
and only when the user has not chosen a value themselves.
"""
import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    if "triton" in sys.modules:
        # triton's own jitted helpers (tl.sum, tl.cumsum, ...) were defined for compilation,
        # and the interpreter cannot call them: the kernels would fail at their first launch.
        raise ImportError(
            "triton was imported before bamba on a machine without a GPU, so bamba's kernels cannot run "
            "under the Triton interpreter: import bamba first, or set TRITON_INTERPRET=1"
        )
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

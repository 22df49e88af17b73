"""Triton kernels for Bamba's Mamba2 layers (SSD scan, one-token step, causal conv1d).

Without a CUDA device the kernels run under the Triton interpreter. The switch must be set before
triton is first imported (its own jitted helpers, tl.sum and the like, are defined at import), so
it happens here, at package import, when the user has not chosen a value and triton is not loaded
yet. If triton came first (transformers imports it, e.g. when a scorer was built before bamba was
imported), the interpreter cannot be switched on any more: the PyTorch backend still runs, and the
Triton one says what to do instead of failing inside a kernel.
"""
import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# What a CPU caller of the Triton backend needs (see above).
INTERPRET_HINT = "TRITON_INTERPRET=1 set before triton is first imported"

# Import bamba before any test module imports transformers (which may import triton): on a
# machine without a GPU, bamba switches Triton to its interpreter, and that must precede triton.
import bamba  # noqa: F401

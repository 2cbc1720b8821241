# The two commands of the quick start: `make repro` (set up and run the pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands in dvc.yaml call `python`: the virtual environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

# `make report REV=main`: the working tree against a git revision (docs/repository.md); `make push` / `make pull`:
# data, models and the run cache to / from the default DVC remote, or DVC_REMOTE_URL for this checkout.
REV ?= main
REPORT_DIR ?= reports
DVC_REMOTE_URL ?=
SET_REMOTE = $(if $(DVC_REMOTE_URL),$(BIN)/dvc remote modify --local storage url "$(DVC_REMOTE_URL)")

.PHONY: repro test bench bench-gpu clean-venv push pull report

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt  # ends with -e .[test]
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)  # train.py runs the pretrain and finetune benchmarks itself
	for b in train dedupe translate generate_rouge; do $(BIN)/python benchmarks/$$b.py || exit 1; done

bench-gpu: $(STAMP)  # one GPU, < 8 min, no downloads: benchmarks/results/gpu-<device>.json (docs/performance.md)
	$(BIN)/python benchmarks/gpu.py

push: $(STAMP)
	$(SET_REMOTE)
	$(BIN)/dvc push --run-cache

pull: $(STAMP)
	$(SET_REMOTE)
	$(BIN)/dvc pull --run-cache

report: $(STAMP)
	$(BIN)/python -m langlift report --rev "$(REV)" --out "$(REPORT_DIR)"

clean-venv:
	rm -rf $(VENV)

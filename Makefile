# The two commands of the quick start: `make repro` (set up and run the pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands in dvc.yaml call `python`: the virtual environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: repro test bench clean-venv

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

clean-venv:
	rm -rf $(VENV)

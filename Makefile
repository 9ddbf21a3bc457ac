# `make train` and `make test` do all set-up on a fresh machine (Python >= 3.10 with venv).
PYTHON ?= python3
VENV := .venv
export CTM_DATA_DIR ?= $(abspath ../shared/data)
# The seed tutorial's reference model, for `ctm bench` and the seed-equivalence tests (outside the package).
export CTM_SEED_REFERENCE ?= $(abspath ../shared/reference/seed_ctm.py)

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

.PHONY: install train test lint
install: $(VENV)/.installed

# A new run in runs/mnist-<time>; ctm first names an unfinished MNIST run in runs/ and how to continue it instead.
train: $(VENV)/.installed
	$(VENV)/bin/ctm train --dataset mnist

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

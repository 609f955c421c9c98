# Two commands for everything: `make reproduce` (the main job) and `make test`.
# Both create the virtualenv .venv on first use (CPU PyTorch pinned for dev and CI).
PYTHON ?= python3
VENV := .venv
TORCH := torch==2.13.0

.PHONY: reproduce demo bench test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH) -e ".[test,peers,docs,experiments]"
	# timm's optimizers are tested, its torchvision requirement cannot load beside CPU torch
	$(VENV)/bin/pip install --quiet --no-deps "timm>=1.0"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(VENV)/bin/adafactor reproduce

demo: install
	$(VENV)/bin/adafactor demo

bench: install
	$(VENV)/bin/adafactor bench

test: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis reproduction

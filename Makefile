# Two commands for everything: `make reproduce` (the main job) and `make test`.
# Both create the virtualenv .venv on first use (CPU PyTorch pinned for dev and CI).
PYTHON ?= python3
VENV := .venv
TORCH := torch==2.13.0

.PHONY: reproduce demo bench test lint fuzz install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH) -e ".[test,lint,peers,docs,experiments]"
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

# One worker per core; each test file on one worker, so that a module's fixtures run once.
test: install lint
	$(VENV)/bin/python -m pytest -q -n auto --dist loadfile

# ruff (the rules in pyproject.toml), the formatter, and mypy on the package.
lint: install
	$(VENV)/bin/ruff check src tests examples scripts
	$(VENV)/bin/ruff format --check src tests examples scripts
	$(VENV)/bin/mypy

# The property tests with fresh random examples, many more of them (CI draws the same ones).
fuzz: install
	HYPOTHESIS_PROFILE=explore $(VENV)/bin/python -m pytest -q tests/test_fuzz.py tests/test_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis reproduction

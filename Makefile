# Two commands matter: `make demo` and `make test`. Both set up what they need on a fresh Debian machine.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: setup system venv test demo lint format bench clean

setup: system venv

system:
	@bash scripts/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

test: setup
	$(VENV)/bin/ruff check kiosk keyserver tests bench
	$(VENV)/bin/ruff format --check kiosk keyserver tests bench
	$(PY) -m pytest -q

demo: setup
	$(PY) -m kiosk.demo

lint: venv
	$(VENV)/bin/ruff check kiosk keyserver tests bench

format: venv
	$(VENV)/bin/ruff format kiosk keyserver tests bench
	$(VENV)/bin/ruff check --fix kiosk keyserver tests bench

bench: setup
	$(PY) bench/seal.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

PYTHON ?= python

.PHONY: install test test-all lint format bench clean

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

test-all:
	$(PYTHON) -m pytest -m ''

lint:
	$(PYTHON) -m ruff check advtrain tests bench

format:
	$(PYTHON) -m ruff format advtrain tests bench

bench:
	$(PYTHON) bench/run_all.py

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info

PYTHON ?= python

.PHONY: install test test-all lint format bench bench-stale gpu-wheels gpu-check clean

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

# Results older than the code they measure (the commit each recorded vs the last commit of that code).
bench-stale:
	$(PYTHON) bench/run_all.py --stale

# Wheels the GPU image lacks (omegaconf, lpips, torchattacks), fetched here into .whl/ for an offline GPU machine.
gpu-wheels:
	PYTHON=$(PYTHON) bash bench/gpu_wheels.sh

# The prepared GPU check (one H100/H200, no network, < 8 min); results in bench/results/.
gpu-check:
	bash bench/gpu_check.sh bench/results

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info

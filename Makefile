# genoserve developer entry points. Every target sets up what it needs (idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed
STUBS := services/genoserve/.stubs-generated
PROTOS := $(wildcard protos/genoserve/*/*.proto) protos/generate.py
PYTEST_ARGS ?=
# The system packages the tests need are installed with apt-get: through sudo when not root.
APT := $(if $(filter 0,$(shell id -u)),,sudo )env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup serve test lint protos models bench clean deploy-check deploy-sync deploy-lock

# tritonclient (the Open Inference Protocol tests' client) pins an older protobuf than genoserve's
# stubs need: it lives in its own virtualenv, run as a separate process by the tests.
CLIENTS := .venv-clients/.installed

setup: $(INSTALLED) $(STUBS) $(CLIENTS)

# The Open Inference Protocol tests drive genoserve with tritonclient and KServe's own client, each
# pinning its own protobuf/web stack: they live apart from .venv.
$(CLIENTS): Makefile
	test -x .venv-clients/bin/python || python3 -m venv .venv-clients
	.venv-clients/bin/python -m pip install -q 'tritonclient[grpc]==2.73.0' kserve==0.21.0 numpy
	touch $@

$(INSTALLED): pyproject.toml setup.py
	@# The job tests start their own redis-server (real, never mocked): install it where missing.
	command -v redis-server >/dev/null 2>&1 || { $(APT) update -qq && \
		$(APT) install -y -qq --no-install-recommends redis-server; }
	@# deploy-check runs a real Prometheus and promtool (Debian's prometheus package has both).
	command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { $(APT) update -qq && \
		$(APT) install -y -qq --no-install-recommends prometheus; }
	@# tests/deploy/test_image.py builds the image's venv and runs it as the image's uid (10001),
	@# which cannot run an interpreter under /root (pyenv): it uses the system's python3 with venv.
	/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || { $(APT) update -qq && \
		$(APT) install -y -qq --no-install-recommends python3-venv python3-pip; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev,train,import]'
	$(PIP) install -q --no-deps 'cellpose>=3.0,<4'   # see the import extra in pyproject.toml
	touch $@

# gRPC stubs + typed .pyi for every package under protos/ (genoserve.v1, and the message-only
# genoserve.tfexample and genoserve.nucleus for reading DeepVariant TFRecords without TensorFlow,
# and genoserve.inference, the Open Inference Protocol API),
# generated into the package by protos/generate.py, the script the wheel build runs too (setup.py).
protos: $(INSTALLED)
	rm -f $(STUBS)
	$(MAKE) $(STUBS)

$(STUBS): $(PROTOS) $(INSTALLED)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) protos/generate.py services --mypy
	touch $@

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
	$(PY) -m tests.bench.realign_bench
	$(PY) -m tests.bench.segmentation_bench
	$(PY) -m tests.bench.embedding_bench
	$(PY) -m tests.bench.overload_bench
	$(PY) -m tests.bench.stream_bench
	$(PY) -m tests.bench.peers_bench
	$(PY) -m tests.bench.report

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
	rm -rf $(VENV) .venv-clients $(STUBS) services/genoserve/v1 services/genoserve/tfexample services/genoserve/nucleus services/genoserve/inference .mypy_cache .ruff_cache .pytest_cache

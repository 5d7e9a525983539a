# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo cluster-demo test venv lint typecheck docs unit integration e2e crds lock k8s-binaries dev-cluster dev-cluster-down clean

$(STAMP): pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install -q -e '.[dev,alpaca,cn]'
	touch $(STAMP)

venv: $(STAMP)

## Run the example Backtest on the embedded default (no cluster needed).
demo: $(STAMP)
	$(BIN)/kubequant run -f examples/backtest.yaml

## The cluster path in one command: dev cluster, CRDs, the operator with the chart's RBAC, and
## examples/backtest.yaml and examples/live-paper.yaml run for real on a local node
## (hack/local_kubelet.py); ends with `kubectl get bt,lts`.
cluster-demo: $(STAMP)
	$(BIN)/python hack/cluster_demo.py

## Set up and run every test: lint, types, CRD drift, unit, integration, e2e on the dev cluster.
test: $(STAMP)
	$(MAKE) lint typecheck docs
	$(BIN)/kubequant crds generate --check
	$(BIN)/python -m kubequant.gitops --check
	hack/run-tests.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	hack/import-lint.sh

typecheck: $(STAMP)
	hack/typecheck.sh kubequant/api kubequant/crdgen.py kubequant/manifests.py kubequant/operator/builders kubequant/operator/status kubequant/operator/config.py kubequant/operator/rbac.py kubequant/redaction.py

## The documentation site (mkdocs.yml, docs/) into build/site: the generated reference pages must
## match the code, and --strict fails on a broken link or anchor or a page missing from the nav.
docs: $(STAMP)
	$(BIN)/kubequant reference-docs --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

crds: $(STAMP)
	$(BIN)/kubequant crds generate

## requirements.lock: what the image installs (the dependencies, the alpaca and cn extras, the build
## backend), every version pinned and every file hashed; rerun after changing pyproject.toml
## (tests/unit/test_supply_chain.py fails until the lock covers it).
lock: $(STAMP)
	printf '%s\n' 'setuptools>=77' wheel | $(BIN)/uv pip compile pyproject.toml - --extra alpaca --extra cn \
	  --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' \
	  --output-file requirements.lock

## Build the control-plane binaries into ~/.cache/kubequant/k8s/<version> (once).
k8s-binaries:
	hack/build-k8s.sh

## A local Kubernetes control plane; kubeconfig in .dev-cluster/kubeconfig. Waits for the API
## server's /readyz and restarts kwok's controller if it gave up (KUBEQUANT_DEV_CLUSTER_TIMEOUT, 300 s).
dev-cluster:
	hack/dev-cluster.sh up

dev-cluster-down:
	hack/dev-cluster.sh down

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# VoiceFleet developer entry points. Every target installs what it needs first,
# so each works alone on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
HOST ?= 127.0.0.1
# pytest-xdist workers for test-fast: twice the CPUs, at most 8. Much of the suite waits
# (servers starting, open-loop traces, sockets), so more workers than cores fill the gaps:
# on 2 cores, quiet, 4 workers took 101 s, 3 took 113 s, `-n auto` (2) 132 s (CONTRIBUTING).
TEST_WORKERS ?= $(shell n=$$(nproc); w=$$((2 * n)); echo $$((w > 8 ? 8 : w)))

# mypy's cache outside the checkout, shared by every clone on the machine: it keys modules
# by content, so a clean clone (CI) re-checks only what differs (1 s instead of ~60 s on
# 2 cores; a type error in a changed file is still found: checked by hand, CONTRIBUTING).
export MYPY_CACHE_DIR ?= $(HOME)/.cache/voicefleet/mypy

PRODUCT_SRC := crds/voicefleet_api inference/voicefleet_inference operator/voicefleet_operator hack/voicefleet_localcluster

.PHONY: images help install lint typecheck unit test test-fast serve bench cluster-build cluster-up cluster-down clean up down chart-crds

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(STAMP) ## venv at .venv with every component's extra, dev tools and the dev-only local cluster

$(STAMP): pyproject.toml hack/pyproject.toml hack/install-system-deps.sh
	hack/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,operator,router,torch,dev]' -e hack
	touch $(STAMP)

lint: install ## ruff on everything, then the import contracts (pyproject [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install ## mypy --strict on product code
	$(BIN)/mypy $(PRODUCT_SRC)

unit: install ## fast tests only (no servers, no cluster)
	$(BIN)/pytest -q tests/unit

test: install ## the full suite: lint, types (beside the node's builds), unit, integration (real servers, real control plane, real node), e2e; two streams side by side
	hack/run-tests.sh

# test-fast leaves out what `make test` runs besides: the cluster tests, the benchmark driver,
# the images test (it builds both images with buildah and runs them in the node's
# containerd) and the three tests marked `heavy` (the schemathesis fuzzer, a fresh server's
# memory peak, the vits-torch server: ~60 of the ~265 CPU-seconds it took with them).
# Test files go to workers whole (--dist loadfile), so a module's server or engine fixture
# starts once, not once per worker, and in collection order, where the slow-marked modules
# come first (tests/conftest.py): none is left to run alone at the end.
test-fast: install ## inner loop: unit + single-server integration tests (no cluster, no benchmark driver, no image builds), in parallel
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not cluster and not nodeless and not heavy" --ignore=tests/integration/test_bench_smoke.py --ignore=tests/integration/test_images.py tests/unit tests/integration

serve: install ## one inference server with the bundled voice on $(HOST):$(PORT)
	$(BIN)/voicefleet-server --host $(HOST) --port $(PORT)

bench: cluster-build ## benchmarks: server vs seed vs bare engine (docs/benchmarks.md), then 100 voices through the operator (figures printed; table in docs/operator.md)
	$(BIN)/python -m voicefleet_bench.serving --output docs/benchmarks.md
	$(BIN)/python -m voicefleet_bench.operator_scale
	$(BIN)/python -m voicefleet_bench.autoscaler_policies --output docs/autoscaler.md
	$(BIN)/python -m voicefleet_bench.autoscaler_loop --voices 100 --pods 3 --seconds 30
	$(BIN)/python -m voicefleet_bench.router_policies
	$(BIN)/python -m voicefleet_bench.router_overhead
	$(BIN)/python -m voicefleet_bench.vits_torch --output docs/vits-torch-bench.md

cluster-build: install ## build kube-apiserver, etcd, controller-manager, scheduler, kubectl, helm from Go modules (cached)
	$(BIN)/voicefleet-cluster build

cluster-up: cluster-build ## bare local control plane + the real node (kubelet + containerd); kubeconfig at .cluster/kubeconfig
	$(BIN)/voicefleet-cluster up

cluster-down: ## stop the local control plane, leaving no process or temp data
	@if [ -x $(BIN)/voicefleet-cluster ]; then $(BIN)/voicefleet-cluster down; fi

up: install ## the whole stack on the local real node: images, chart (operator, router) + sample voice, Ready; prints a curl
	$(BIN)/voicefleet-cluster stack-up

down: ## stop everything `make up` started (cluster, pods), leaving no process
	@if [ -x $(BIN)/voicefleet-cluster ]; then $(BIN)/voicefleet-cluster stack-down; fi

FLAVOR ?= cpu
images: install ## server + control images from docker/ on a debootstrap Debian base, loaded into the node's containerd (FLAVOR=gpu: the CUDA server)
	hack/images/install-deps.sh
	$(BIN)/python -m voicefleet_localcluster.imagebuild --flavor $(FLAVOR)

chart-crds: ## copy crds/*.yaml into the Helm chart (a test fails when the copy drifts)
	$(PYTHON) hack/sync_chart_crds.py

clean: cluster-down ## remove the venv and local state
	rm -rf $(VENV) .cluster .mypy_cache .ruff_cache .pytest_cache

# Every target creates or refreshes the project's virtual environment itself:
# on a fresh clone, `make test` and `make dev-up` need nothing installed first
# but Python 3.11 and Go (Go only builds the dev control plane, once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toka-installed

.PHONY: demo venv test test-unit lint fmt crds controlplane node-packages node testtools dev-up dev-down bench bench-smoke clean

# The real node's Debian packages (containerd, runc, CNI plugins; buildah, umoci and
# debootstrap to build the image without a Docker engine; ipset for the NetworkPolicy
# engine), installed when a program is missing. Needs root and apt.
NODE_PACKAGES := containerd runc containernetworking-plugins buildah umoci debootstrap ipset

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP)

# kube-apiserver, etcd, kube-controller-manager, kubectl: found in
# $KUBEBUILDER_ASSETS or ~/.cache/toka, else built from their Go modules (once);
# helm (for the chart's tests) likewise into ~/.cache/toka.
controlplane: $(STAMP)
	$(BIN)/toka dev binaries

node-packages:
	@missing=""; \
	for prog in containerd ctr runc buildah umoci debootstrap ipset; do \
	  command -v $$prog >/dev/null 2>&1 || missing=yes; done; \
	[ -x /usr/lib/cni/bridge ] || missing=yes; \
	if [ -n "$$missing" ]; then \
	  echo "installing the real node's Debian packages: $(NODE_PACKAGES)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(NODE_PACKAGES) >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(NODE_PACKAGES) >/dev/null; }; \
	fi

# The real node: kubelet, kube-proxy, kube-scheduler (same Go module as the control
# plane), crictl and kube-router, into the same cache; the image is built by `toka`.
node: controlplane node-packages
	$(BIN)/toka dev binaries --node

# The tests also need Jaeger v2 (the tracing tests' OTLP receiver); the demo does not.
testtools: node
	$(BIN)/toka dev binaries --with-jaeger

# The main job: a real session on the built-in dev cluster, with live progress.
demo: node
	$(BIN)/toka demo

test: testtools
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/toka crds --check

fmt: $(STAMP)
	$(BIN)/ruff format operator tests bench
	$(BIN)/ruff check --fix operator tests bench

crds: $(STAMP)
	$(BIN)/toka crds

# Benchmarks print their baseline (measured in the same run) and a ratio; never asserted.
bench: testtools
	$(BIN)/python -m bench.llm_gateway_overhead
	$(BIN)/python -m bench.kernel_agent
	$(BIN)/python -m bench.operator_scale
	$(BIN)/python -m bench.results_flow
	$(BIN)/python -m bench.confinement
	$(BIN)/python -m bench.tracing
	$(BIN)/python -m bench.kube_credentials

bench-smoke: testtools
	$(BIN)/python -m bench.llm_gateway_overhead --smoke
	$(BIN)/python -m bench.kernel_agent --smoke
	$(BIN)/python -m bench.results_flow --smoke
	$(BIN)/python -m bench.confinement --smoke
	$(BIN)/python -m bench.tracing --smoke
	$(BIN)/python -m bench.kube_credentials --smoke

dev-up: node
	$(BIN)/toka dev up

dev-down: $(STAMP)
	$(BIN)/toka dev down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

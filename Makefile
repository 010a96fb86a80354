# Berth. `make run` serves the demo cluster; `make test` sets everything up from nothing and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py ext/_native.pyx scheduler/model/constants.py | cksum | cut -d' ' -f1)
K8S_BIN := $(shell awk '$$1=="k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2; exit}' tests/e2e/k8s/go.mod)
export BERTH_K8S_BIN ?= $(HOME)/.cache/berth/k8s-$(K8S_BIN)
PORT ?= 8888

.PHONY: install run test test-unit test-e2e k8s cluster bench bench-quality bench-trace bench-e2e bench-churn bench-scale bench-ui browser locust certs image lint clean bench-quality-e2e

install: $(STAMP)  ## virtualenv, dependencies, and the Cython kernels compiled into the package

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,load]'
	$(PY) -c 'import scheduler.kernels as k; assert k.NATIVE or k.NO_EXTENSIONS, "Cython kernels did not build"'
	rm -f $(VENV)/.installed-* && touch $@

run: install  ## serve the embedded demo cluster on 127.0.0.1:$(PORT)
	@echo "Berth demo cluster on http://127.0.0.1:$(PORT); its dashboard: http://127.0.0.1:$(PORT)/ui. In another terminal, try:"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/scheduler/filter -H 'Content-Type: application/json' -d @config/demo-filter-request.json"
	$(PY) -m scheduler serve --demo --port $(PORT)

k8s:  ## build etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and helm (first time ~5-15 min; cached after)
	tests/e2e/k8s/build.sh

test: install k8s lint browser  ## every test: unit, property, fuzz (bounded), locust smoke, end-to-end
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: install browser
	$(PY) -m pytest -q -p no:cacheprovider -m 'not e2e'

test-e2e: install k8s
	$(PY) -m pytest -q -p no:cacheprovider -m e2e

browser:  ## Debian's chromium and chromium-driver for the dashboard's browser tests (skipped when present)
	scripts/install-chromium.sh

lint: install  ## ruff check, ruff format --check and mypy, all clean
	$(VENV)/bin/ruff check scheduler tests loadtests scripts
	$(VENV)/bin/ruff format --check scheduler tests loadtests scripts
	$(VENV)/bin/mypy

cluster: install k8s  ## a local control plane + Berth (PORT) + berth-scheduler to try by hand; API_PORT, ETCD_PORT, ETCD_PEER_PORT: free ones unless set
	$(PY) scripts/cluster.py --port $(PORT) $(if $(API_PORT),--api-port $(API_PORT)) \
		$(if $(ETCD_PORT),--etcd-port $(ETCD_PORT)) $(if $(ETCD_PEER_PORT),--etcd-peer-port $(ETCD_PEER_PORT))

bench: install  ## verb latency/throughput: Berth vs the floor (a compiled server; needs Go), its Python twins, a typical extender (needs wrk)
	@command -v wrk >/dev/null || { echo "make bench needs wrk (https://github.com/wg/wrk): on Debian/Ubuntu" \
		"\`sudo apt-get install -y wrk\`, on macOS \`brew install wrk\`; then run make bench again" >&2; exit 2; }
	$(PY) -m scheduler bench --markdown docs/benchmarks/bench.md

bench-quality: install  ## GPU placement quality: Berth's policy vs kube-scheduler's LeastAllocated
	$(PY) -m loadtests.quality --markdown docs/benchmarks/quality.md

bench-e2e: install k8s  ## pods/s of kube-scheduler alone, with the zero-cost extender (needs Go) and through Berth
	$(PY) -m loadtests.throughput --nodes 1000,5000 --pods 2000 --repeat 2 --markdown docs/benchmarks/e2e-throughput.md

DURATION ?= 600
RATE ?= 130
CHURN_NODES ?= 5000
WARMUP ?= 60
bench-churn: install k8s  ## sustained churn on KWOK nodes (RATE pods/s, DURATION s per mode): alone, zero-cost extender, Berth
	$(PY) -m loadtests.churn --nodes $(CHURN_NODES) --rate $(RATE) --duration $(DURATION) --warmup $(WARMUP) \
		--markdown docs/benchmarks/churn.md

bench-scale: install k8s  ## RSS and initial-sync time with 7,500 nodes and 150,000 pods
	$(PY) -m loadtests.scale --pods-from apiserver --repeat 2 --ab --probe-list --markdown docs/benchmarks/scale-apiserver.md

bench-trace: install  ## GPU placement on the Alibaba 2023 trace's shape: Berth vs Random, LeastAllocated, BestFit, FGD
	$(PY) -m loadtests.trace_bench --variant default,multi-gpu-heavy --markdown docs/benchmarks/trace.md

bench-ui: install browser  ## the dashboard at 7,500 nodes in headless Chromium: page weight, JSON per refresh, render time
	$(PY) -m loadtests.ui_bench --nodes 7500 --markdown docs/benchmarks/ui.md

bench-quality-e2e: install k8s  ## GPU placement through the real kube-scheduler, alone vs with Berth (trace-shaped; ~10 min at SCALE=1; SCALE=0.1 for a quick run; PODS, SEEDS, SHARING=on|both)
	$(PY) -m loadtests.quality_e2e --scale $(or $(SCALE),1) $(if $(PODS),--pods $(PODS)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(SHARING),--sharing $(SHARING)) --markdown docs/benchmarks/quality-e2e$(if $(filter-out 1 1.0,$(or $(SCALE),1)),-scale$(SCALE)).md

locust: install
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:$(PORT)

image: install  ## Berth's image from Debian's packages (mmdebstrap bases, podman build), then its demo's /readyz; cold ~12 min, warm ~20 s
	BERTH_IMAGE_TEST=1 $(PY) -m pytest -q -s -p no:cacheprovider -m image tests/test_image.py

certs:  ## a CA, a server pair and a client pair in certs/ for trying mTLS
	scripts/make-certs.sh certs

clean:
	rm -rf $(VENV) build *.egg-info ext/*.c scheduler/kernels/*.so

.PHONY: podresources-stubs
PODRESOURCES := scheduler/agent/podresources/v1
podresources-stubs: install  ## regenerate the kubelet PodResources v1 stubs (checked in) from $(PODRESOURCES)/api.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PODRESOURCES)/api.proto

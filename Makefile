# streamgate: the front door. `make demo` shows it working; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export STREAMGATE_CACHE ?= $(HOME)/.cache/streamgate

.PHONY: install lint format test unit run demo demo-down bench clean image constraints reliability

install: $(STAMP) ## create .venv and install streamgate with its dev tools

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing streamgate and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --disable-pip-version-check --upgrade pip && \
	   $(BIN)/python -m pip install --disable-pip-version-check --constraint constraints.txt \
	     -e '.[dev]'; } \
	   > $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@touch $@

lint: install ## ruff, mypy --strict and the import contracts (pyproject.toml)
	$(BIN)/ruff check app tests hack bench
	$(BIN)/ruff format --check app tests hack bench
	$(BIN)/mypy app bench
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format app tests hack bench
	$(BIN)/ruff check --fix app tests hack bench

test: lint ## lint, then every test (unit, real registries, real control plane)
	@$(BIN)/python -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - that is a failure" >&2; exit 1; fi; \
	exit $$rc

unit: install ## unit tests only (no registries, no cluster)
	$(BIN)/python -m pytest -q tests/unit

run: install ## the webhook alone on https://127.0.0.1:8443 with a self-signed certificate
	@$(BIN)/streamgate certs .demo/certs
	@echo "URL: https://127.0.0.1:8443/validate and /mutate"
	$(BIN)/streamgate serve --host 127.0.0.1 --port 8443 --cert .demo/certs/tls.crt --key .demo/certs/tls.key

demo: install ## the main job: local cluster + registry + webhook, examples applied
	@hack/demo.sh

demo-down: ## stop the demo's webhook, registries and cluster
	-@hack/webhook.sh down
	-@hack/registries.sh down
	-@hack/cluster.sh down

constraints: install ## re-pin constraints.txt from the current virtualenv
	@{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

IMAGE ?= streamgate:dev
image: install ## build the container image: Docker, else podman (installed when missing); prints ID, size, SBOM path
	@IMAGE=$(IMAGE) hack/image.sh build

reliability: install ## long reliability runs (24,000 fuzz cases, 5-min soak, faults, safety, security; ~15 min): docs/reliability.md
	@out=$(VENV)/reliability; rm -rf $$out; mkdir -p $$out; \
	STREAMGATE_RELIABILITY=long STREAMGATE_RELIABILITY_RESULTS=$$out/results.jsonl \
	  $(BIN)/python -m pytest -ra tests/reliability \
	  tests/e2e/test_chart_install.py::test_pods_admitted_under_pod_security_restricted \
	  --junitxml=$$out/junit.xml $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/python hack/reliability-report.py $$out/results.jsonl --junit $$out/junit.xml || rc=1; \
	exit $$rc

bench: install ## benchmark suite (~15 min; needs the local registry and cluster): docs/benchmarks.{md,json,png}
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache

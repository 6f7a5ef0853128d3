# polymicro developer tasks. `make help` lists them.
# Everything runs from the virtualenv in .venv, (re)installed from pyproject.toml
# only when pyproject.toml changes (stamp file .venv/.installed).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Extra pytest arguments, e.g. make test PYTEST_ARGS='-k projects -x'
PYTEST_ARGS ?=
# Redis database used by the wire-protocol run (db 15, flushed by the tests; with several
# test processes the next ones take 14, 13, …: tests/conftest.py worker_redis_url).
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# Test processes (pytest-xdist; 0 runs them in this one process, as plain pytest does).
# Whole files go to one process (--dist loadfile), so a module's servers start once.
TEST_WORKERS ?= 2
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadfile

# Extra arguments for the reliability runs, e.g. make soak SOAK_ARGS='--minutes 10'
FUZZ_ARGS ?=
SOAK_ARGS ?=
FAULTS_ARGS ?=

# make k8s-check: its tools (checkov, kubernetes-validate) live in their own venv under
# var/, built on first use from deploy/kubernetes/check-requirements.txt.  checkov brings
# about 100 packages (~400 MB, ~25 s to install) that nothing else needs, so `make venv`
# stays fast and the app's dependency set stays small.
K8S_TOOLS    := var/k8s-tools
K8S_STAMP    := $(K8S_TOOLS)/.installed
K8S_OVERLAYS := dev prod
# The oldest and the newest Kubernetes releases the rendered manifests must validate on.
K8S_VERSIONS ?= 1.30.0 1.37.0
DEV_SECRETS  := deploy/kubernetes/overlays/dev/secrets.env

.PHONY: help venv run dev test test-wire lint format bench bench-mixed bench-otlp bench-lifecycle fuzz soak faults k8s-check k8s-dev-secret \
	clean clean-data

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv and install the package with its dev extras

run: $(STAMP) ## serve the API on 127.0.0.1 (starts SecantusDB unless POLYMICRO_MONGODB_URI is set)
	scripts/run.sh

dev: $(STAMP) ## like run, but flask run --debug: restarts on every code change (reloader)
	scripts/run.sh --dev

test: $(STAMP) ## run the tests on mongomock, in TEST_WORKERS processes (PYTEST_ARGS passed through)
	scripts/ensure-chromium.sh
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-wire: $(STAMP) ## run the tests against SecantusDB and Redis; junit xml in var/test-wire.xml
	mkdir -p var
	scripts/ensure-chromium.sh
	POLYMICRO_TEST_DB=secantus POLYMICRO_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/pytest $(PYTEST_XDIST) --junitxml=var/test-wire.xml $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check, ruff format --check, hadolint Dockerfile, actionlint (.github/workflows)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck

format: $(STAMP) ## apply ruff's fixes and formatting (fails if unfixable problems remain)
	status=0; $(BIN)/ruff check --fix . || status=$$?; $(BIN)/ruff format .; exit $$status

bench: $(STAMP) ## run the benchmark (bench/run.py; BENCH_ARGS passed through)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-mixed: $(STAMP) ## dashboard reads idle, then under log ingest (bench/mixed.py; BENCH_ARGS)
	$(BIN)/python bench/mixed.py $(BENCH_ARGS)

bench-otlp: $(STAMP) ## OTLP/HTTP log ingest against POST /api/logs/batch (bench/ingest.py; BENCH_ARGS)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)

bench-lifecycle: $(STAMP) ## rollups vs raw for long /series ranges on 1M points (bench/lifecycle.py; BENCH_ARGS)
	$(BIN)/python bench/lifecycle.py $(BENCH_ARGS)

fuzz: $(STAMP) ## Schemathesis against gunicorn + a fresh SecantusDB, ~6.5 min (scripts/fuzz.py; FUZZ_ARGS)
	$(BIN)/python scripts/fuzz.py $(FUZZ_ARGS)

soak: $(STAMP) ## reads + log/point ingest for 3 min: no 5xx, no lost write (bench/soak.py; SOAK_ARGS)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

faults: $(STAMP) ## stop/kill the database, Redis, a worker; no lost or half-written batch (scripts/faults.py)
	$(BIN)/python scripts/faults.py $(FAULTS_ARGS)

$(K8S_STAMP): deploy/kubernetes/check-requirements.txt
	test -x $(K8S_TOOLS)/bin/python || $(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(K8S_TOOLS)/bin/python -m pip install --quiet -r deploy/kubernetes/check-requirements.txt
	touch $@

# Never overwritten once it exists (the URLs in it are the user's).
$(DEV_SECRETS):
	umask 077; key=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'); \
	sed "s|^POLYMICRO_SECRET_KEY=.*|POLYMICRO_SECRET_KEY=$$key|" $@.example > $@
	@echo "wrote $@ with a random POLYMICRO_SECRET_KEY; set the MongoDB and Redis URLs in it"

k8s-dev-secret: $(DEV_SECRETS) ## create the dev overlay's secrets.env (random key; edit the URLs)

k8s-check: $(K8S_STAMP) $(DEV_SECRETS) ## render every Kubernetes overlay, validate it (--strict) and scan it (checkov)
	mkdir -p var/k8s
	if command -v kubectl >/dev/null; then render="kubectl kustomize"; \
	elif command -v kustomize >/dev/null; then render="kustomize build"; \
	else echo "k8s-check needs kubectl (which embeds kustomize) or kustomize on PATH" >&2; exit 1; fi; \
	for overlay in $(K8S_OVERLAYS); do \
		echo "render: $$render deploy/kubernetes/overlays/$$overlay > var/k8s/$$overlay.yaml"; \
		$$render deploy/kubernetes/overlays/$$overlay > var/k8s/$$overlay.yaml; \
	done
	for version in $(K8S_VERSIONS); do \
		echo "validate: kubernetes-validate --strict -k $$version"; \
		$(K8S_TOOLS)/bin/kubernetes-validate --strict --quiet -k $$version \
			$(foreach overlay,$(K8S_OVERLAYS),var/k8s/$(overlay).yaml); \
	done
	$(K8S_TOOLS)/bin/checkov --framework kubernetes --quiet --compact --skip-download \
		$(foreach overlay,$(K8S_OVERLAYS),-f var/k8s/$(overlay).yaml)

clean: ## remove .venv, caches and var/ files, keeping the database in var/db
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -exec rm -rf {} +
	if [ -d var ]; then find var -mindepth 1 -maxdepth 1 ! -name db -exec rm -rf {} +; fi

clean-data: ## delete the development database in var/db (stop make run first)
	@pid=; if [ -f var/secantus.pid ]; then read -r pid _ <var/secantus.pid || true; fi; \
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then \
		echo "SecantusDB (pid $$pid) is still running on var/db; stop make run first" >&2; \
		exit 1; \
	fi
	rm -rf var/db var/secantus.pid

# TriageLab — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen
MODE ?= auto
PYTEST_ARGS ?=
SYSTEM_PACKAGES := prometheus prometheus-alertmanager docker-compose wrk

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: bootstrap
bootstrap: ## Install uv (if missing) and the locked Python environment
	@command -v $(UV) >/dev/null 2>&1 || { echo "==> installing uv"; python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv; }
	@$(UV) --version >/dev/null 2>&1 || { echo "uv not found after install: add ~/.local/bin to PATH"; exit 1; }
	@$(UV) sync --frozen --quiet

.PHONY: system-deps
system-deps: ## Install Prometheus, Alertmanager, docker-compose and wrk (Debian, as root)
	@missing=""; for b in prometheus promtool alertmanager amtool docker-compose wrk; do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "==> installing Debian packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "missing:$$missing — install them: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	fi

.PHONY: test
test: bootstrap system-deps ## Run the whole test suite (unit, rules, integration)
	$(RUN) pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: bootstrap ## Run the tests that start no Prometheus or lab
	$(RUN) pytest -m "not integration" $(PYTEST_ARGS)

.PHONY: fmt
fmt: bootstrap ## Format the code (ruff)
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: lint
lint: bootstrap ## Lint and check formatting (ruff)
	$(RUN) ruff check .
	$(RUN) ruff format --check .

.PHONY: bench-overhead
bench-overhead: bootstrap ## Instrumentation overhead: bare vs fully instrumented app, one core each
	$(RUN) python -m tests.bench.overhead

# --- the lab ----------------------------------------------------------------------------
LAB := $(RUN) python -m labctl

.PHONY: up
up: bootstrap ## Start the lab (native without Docker, compose with it; MODE=native|compose)
	$(LAB) up --mode $(MODE)

.PHONY: down
down: ## Stop what `make up` started (data is kept)
	$(LAB) down --mode $(MODE)

.PHONY: status
status: ## Show each component, pid, URL and health
	$(LAB) status --mode $(MODE)

.PHONY: clean
clean: ## Stop the lab and delete its data (var/)
	$(LAB) clean --mode $(MODE)

.PHONY: logs
logs: ## Show the last lines of each component's log (compose: docker compose logs)
	$(LAB) logs

.PHONY: ps
ps: ## Compose: list the containers
	docker compose ps 2>/dev/null || docker-compose ps

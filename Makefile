# TriageLab — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen
MODE ?= auto
PYTEST_ARGS ?=
SYSTEM_PACKAGES := prometheus prometheus-alertmanager docker-compose wrk postgresql

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: bootstrap
bootstrap: ## Install uv (if missing: pipx, else a venv of its own) and the locked Python environment
	@deploy/bootstrap.sh

.PHONY: system-deps
system-deps: ## Install Prometheus, Alertmanager, docker-compose, wrk, PostgreSQL (Debian, as root)
	@missing=""; for b in prometheus promtool amtool docker-compose wrk; do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	command -v alertmanager >/dev/null || command -v prometheus-alertmanager >/dev/null || missing="$$missing alertmanager"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing initdb"; \
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

PYTHONS ?= 3.12 3.13

.PHONY: test-pythons
test-pythons: bootstrap ## The tests that start no lab on each of PYTHONS (from PATH or pyenv), one venv each
	@for v in $(PYTHONS); do \
		py=$$(command -v python$$v 2>/dev/null); \
		{ [ -n "$$py" ] && "$$py" -V >/dev/null 2>&1; } || py=$$(pyenv prefix $$v 2>/dev/null | head -n1)/bin/python$$v; \
		"$$py" -V >/dev/null 2>&1 || { echo "Python $$v not found (PATH, pyenv): install it or set PYTHONS"; exit 1; }; \
		echo "==> Python $$v: $$py"; \
		UV_PROJECT_ENVIRONMENT=.venv-$$v $(UV) run --frozen --python "$$py" pytest -m "not integration" -q -p no:cacheprovider $(PYTEST_ARGS) || exit 1; \
	done

.PHONY: fmt
fmt: bootstrap ## Format the code (ruff)
	$(RUN) ruff format services loadtest labctl tests
	$(RUN) ruff check --fix services loadtest labctl tests

.PHONY: lint
lint: bootstrap ## Lint and check formatting (ruff)
	$(RUN) ruff check services loadtest labctl tests
	$(RUN) ruff format --check services loadtest labctl tests

.PHONY: bench-overhead
bench-overhead: bootstrap ## Instrumentation overhead: bare vs fully instrumented app, one core each
	$(RUN) python -m tests.bench.overhead

# --- the lab ----------------------------------------------------------------------------
LAB := $(RUN) labctl

# The mode is decided first, by a shell script: compose mode needs Docker and make, not Python.
LABSH := deploy/lab.sh

.PHONY: up
up: ## Start the lab (native without Docker, compose with it; MODE=native|compose)
	@if [ "$$(MODE=$(MODE) $(LABSH) mode)" = compose ]; then $(LABSH) compose up; \
	else $(MAKE) --no-print-directory bootstrap && $(LAB) up --mode native; fi

.PHONY: down
down: ## Stop what `make up` started (data is kept)
	@if [ "$$(MODE=$(MODE) $(LABSH) mode)" = compose ]; then $(LABSH) compose down; \
	else $(LAB) down --mode native; fi

.PHONY: status
status: ## Show each component, pid, URL and health (exit 3: not running, 1: unhealthy)
	@if [ "$$(MODE=$(MODE) $(LABSH) mode)" = compose ]; then $(LABSH) compose status; \
	else $(LAB) status --mode native; fi

.PHONY: clean
clean: ## Stop the lab and delete its data (var/)
	@if [ "$$(MODE=$(MODE) $(LABSH) mode)" = compose ]; then $(LABSH) compose clean; \
	else $(LAB) clean --mode native; fi

.PHONY: logs
logs: ## Show the last lines of each component's log (C="gateway payment" to pick)
	@if [ "$$(MODE=$(MODE) $(LABSH) mode)" = compose ]; then $(LABSH) compose logs; \
	else $(LAB) logs $(C); fi

.PHONY: ps
ps: ## Compose: list the containers
	docker compose ps 2>/dev/null || docker-compose ps

# --- load, alerts ------------------------------------------------------------------------
SHAPE ?= steady
HOST ?= http://127.0.0.1:8000
DURATION ?=
USERS ?=

.PHONY: load
load: bootstrap ## Headless Locust against the lab: SHAPE=steady|ramp|spike|soak|diurnal [DURATION= USERS=]
	@mkdir -p var/loadtest
	LOCUST_SHAPE_DURATION=$(DURATION) LOCUST_SHAPE_USERS=$(USERS) $(RUN) locust \
	  -f loadtest/locustfile.py,loadtest/shapes/$(SHAPE).py --headless --host $(HOST) \
	  --csv var/loadtest/$(SHAPE) --html var/loadtest/$(SHAPE).html --json-file var/loadtest/$(SHAPE)

.PHONY: load-ui
load-ui: bootstrap ## Locust web UI on :8091 (make up already runs one on :8089)
	$(RUN) locust -f loadtest/locustfile.py --web-host 127.0.0.1 --web-port 8091 --host $(HOST)

.PHONY: rules
rules: bootstrap ## Regenerate the SLO recording and alerting rules from deploy/prometheus/slos.yaml
	$(LAB) slo render

.PHONY: rules-check
rules-check: bootstrap system-deps ## Lint and unit-test the Prometheus rules and Alertmanager config
	$(LAB) slo check
	promtool check rules --lint=all --lint-fatal deploy/prometheus/rules/*.yml deploy/prometheus/slo-profiles/slo-lab.yml
	promtool test rules deploy/prometheus/tests/*.test.yml
	amtool check-config deploy/alertmanager/alertmanager.yml

.PHONY: slo-tests
slo-tests: bootstrap system-deps ## Re-measure time-to-page with promtool and rewrite the SLO rule tests (~7 min)
	$(LAB) slo write-tests

# --- benchmarks ---------------------------------------------------------------------------
.PHONY: bench
bench: bootstrap system-deps ## Benchmarks: overhead, capacity, Locust cost, footprint, time to detect (~10 min)
	$(RUN) python -m tests.bench.run_all

.PHONY: bench-quick
bench-quick: bootstrap system-deps ## The benchmarks in smoke mode (under 3 minutes)
	$(RUN) python -m tests.bench.run_all --quick

# --- drills -------------------------------------------------------------------------------
DRILLCTL := $(LAB) drill
DRILL ?=
SEED ?=
FORCE ?=
SERVICE ?=
KIND ?=
ONLY ?=

.PHONY: drills
drills: bootstrap ## List the drills (no answers)
	$(DRILLCTL) list

.PHONY: drill
drill: bootstrap ## Run one drill against the running lab: make drill DRILL=payment-latency
	@test -n "$(DRILL)" || { echo "usage: make drill DRILL=<id>  (make drills lists them)"; exit 2; }
	$(DRILLCTL) run $(DRILL)

.PHONY: blind
blind: bootstrap ## Start a random drill without naming it (SEED=n to repeat one, FORCE=1 to abandon an open one)
	$(DRILLCTL) blind $(if $(SEED),--seed $(SEED)) $(if $(FORCE),--force)

.PHONY: hint
hint: bootstrap ## The next hint of the blind drill (costs points)
	$(DRILLCTL) hint

.PHONY: answer
answer: bootstrap ## Answer the blind drill: make answer SERVICE=payment KIND=latency (none/none: no incident)
	@test -n "$(SERVICE)" -a -n "$(KIND)" || { echo "usage: make answer SERVICE=<service|none> KIND=<fault kind|none>"; exit 2; }
	$(DRILLCTL) answer --service $(SERVICE) --kind $(KIND)

.PHONY: verify
verify: bootstrap system-deps ## Run every drill on its own native lab; fail on a missed or unexpected alert or lost data (ONLY=a,b)
	$(DRILLCTL) verify $(if $(ONLY),--only $(ONLY))

.PHONY: rollback
rollback: bootstrap ## Clear every fault and restart crashed services
	$(DRILLCTL) rollback

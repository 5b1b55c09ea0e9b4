# Two commands for a new user: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BROKERS ?= 1

.PHONY: demo test kafka-up kafka-down kafka-status bench bench-smoke lint clean

# The virtualenv is rebuilt when a requirements file changes.
$(VENV)/.runtime-installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## demo: the guide's whole story against a real broker (started here if none is reachable)
demo: $(VENV)/.runtime-installed
	$(PY) scripts/demo.py

## test: unit and integration tests; the suite starts (and stops) its own broker if needed
# Two workers, each with a broker of its own: most of a Kafka test is waiting (elections, timeouts,
# an outage), so two share the machine's cores well. worksteal keeps the long fault tests spread.
test: $(VENV)/.dev-installed
	$(PY) -m pytest -n 2 --dist worksteal

## kafka-up / kafka-down: a local KRaft broker on 127.0.0.1:9092 (BROKERS=3 for a cluster on 9092/9094/9096)
## and the Schema Registry of registry mode on 127.0.0.1:8081 (REGISTRY_PORT=...; built by Maven once)
REGISTRY_PORT ?= 8081
# A cluster of N > 1 brokers keeps its data apart (.kafka/data-N), so both sizes can be used in turn.
KAFKA_DATA = .kafka/data$(if $(filter-out 1,$(BROKERS)),-$(BROKERS))

kafka-up: $(VENV)/.runtime-installed
	$(PY) -m orders_dlq.local_kafka start --brokers $(BROKERS) --data-dir $(KAFKA_DATA)
	$(PY) -m orders_dlq.local_registry start --port $(REGISTRY_PORT)

kafka-down: $(VENV)/.runtime-installed
	$(PY) -m orders_dlq.local_registry stop
	@for dir in .kafka/data .kafka/data-*; do \
		if [ -d "$$dir" ]; then $(PY) -m orders_dlq.local_kafka stop --data-dir "$$dir" || exit 1; fi; \
	done

kafka-status: $(VENV)/.runtime-installed
	$(PY) -m orders_dlq.local_kafka status --data-dir $(KAFKA_DATA)
	-$(PY) -m orders_dlq.local_registry status

## bench: throughput, latency and memory beside the raw client (see bench/README.md)
bench: $(VENV)/.runtime-installed
	$(PY) bench/run.py

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

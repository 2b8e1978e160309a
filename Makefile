# The two commands in the README: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch is installed first (pip then keeps it); set TORCH_SPEC="torch" for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
SHARED ?= $(abspath ../shared)
export ACTLAB_MODELS_DIR ?= $(SHARED)/models
export ACTLAB_DATA_DIR ?= $(SHARED)/data
export HF_HUB_DISABLE_TELEMETRY = 1

BIN := $(VENV)/bin
STAMP := $(VENV)/.actlab-installed

# The oldest transformers line we support, tested on the version-sensitive parts (hooks, lens, loading).
COMPAT_VENV ?= .venv-compat
COMPAT_TRANSFORMERS ?= transformers==4.57.6
COMPAT_TESTS ?= tests/test_hooks.py tests/test_lens.py tests/test_loading.py tests/test_stats.py tests/test_steering_core.py \
	tests/test_interventions.py tests/test_architecture.py tests/test_edges.py tests/test_attention.py tests/test_patching.py tests/test_tuned_lens.py \
	tests/test_scale.py::test_cells_sharing_a_prefix_equal_steering_each_cell tests/test_support_matrix.py

.PHONY: demo test test-compat test-docs lint bench venv clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (first run only: a CPU build of torch, transformers, trl, ...; about a minute)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing $(TORCH_SPEC) unless present"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	@echo "installing actlab (editable) and its dependencies"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@echo "$(VENV) ready"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/actlab demo $(if $(OUT),--out $(OUT),)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Every README and docs code block, run in order in a temporary folder, with the claims beside it checked
# (tests/doc_walk.py; about 20 minutes on 2 CPU cores). ACTLAB_SHARED_DIR: the shared models and data.
test-docs: $(STAMP)
	ACTLAB_SHARED_DIR=$(SHARED) $(BIN)/python -m pytest -q -m docwalk tests/test_doc_walk.py -s $(PYTEST_ARGS)

$(COMPAT_VENV)/.actlab-installed: pyproject.toml
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/python -c "import torch" 2>/dev/null || $(COMPAT_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install --quiet "$(COMPAT_TRANSFORMERS)" -e ".[dev]"
	touch $@

test-compat: $(COMPAT_VENV)/.actlab-installed
	$(COMPAT_VENV)/bin/python -m pytest -q $(COMPAT_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)  # ACTLAB_DATA_DIR=../shared/data for the parts on real data
	cd bench && for b in bench_capture bench_steering bench_sweep bench_sae bench_memory bench_attention; do \
		../$(BIN)/python $$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

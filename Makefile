# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is pinned and installed first: unpinned, pip would pull a multi-GB CUDA build on a
# machine without a GPU. On a CUDA machine the same pin resolves to PyPI's CUDA wheel.
TORCH  ?= torch==2.13.0
DEMO   ?= demo-output

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[train,maps,test]"
	touch $@

# The main job on the offline default (synthetic source): export → tile → train fusion → evaluate →
# generate → train seg → evaluate, with tiny models. Re-running resumes.
demo: venv
	$(BIN)/rsgee demo --out $(DEMO)

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis build *.egg-info

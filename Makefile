# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is pinned and installed first: unpinned, pip would pull a multi-GB CUDA build on a
# machine without a GPU. On a CUDA machine the same pin resolves to PyPI's CUDA wheel.
TORCH  ?= torch==2.13.0
DEMO   ?= demo-output

.PHONY: demo test venv clean gpu-wheels

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

# Wheels the GPU machine's image lacks (it has PyTorch, Lightning, numpy, PyYAML …; not rasterio, pyproj, shapely),
# for its Python ($(GPU_PYTHON)), into .whl/ (ignored): carry .whl and run benchmarks/gpu_converge.py as README says.
GPU_PYTHON ?= 3.12
GPU_WHEELS := rasterio==1.4.4 pyproj==3.7.2 shapely==2.2.0 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis build *.egg-info

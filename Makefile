# The two commands of the README, on a fresh machine:
#   make demo   set everything up (once) and run the offline demo: prints its table, writes runs/demo/
#   make test   set everything up (once) and run the test suite
# Setup is a virtual environment in .venv with the pinned torch, then the package built in place with its
# C++ (and, when nvcc is found, CUDA) extension. It runs once: stamp files in .venv record what is done, and
# the build is redone only when setup.py, pyproject.toml or a csrc/ source changes.
#
# Variables (make VAR=value, or the environment):
#   PYTHON=python3        the interpreter that creates the venv
#   VENV=.venv            where the venv goes
#   EXTRAS=test,bench     pip extras: pytest/hypothesis, and onnx/onnxruntime/openvino (export, bench baseline)
#   SETUP=                with VENV pointing at an environment that already has everything: use it as is
#   FORCE_CPU=1 / FORCE_CUDA=1 / CUDA_HOME / TORCH_CUDA_ARCH_LIST / MAX_JOBS: read by setup.py (see README)

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= test,bench
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
# pip's warning for each local package index that lacks a package: noise, filtered (pipefail keeps pip's status)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
TORCH_STAMP := $(VENV)/.torch-installed
BUILD_STAMP := $(VENV)/.sparseyolo-built
SETUP ?= $(BUILD_STAMP)
CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: demo test setup help clean-venv

help:
	@sed -n '1,16p' Makefile

demo: $(SETUP)
	$(PY) -m sparseyolo demo

test: $(SETUP)
	$(PY) -m pytest -q tests

setup: $(SETUP)

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja $(QUIET)
	$(PY) -m pip install -q $(TORCH_PINS) $(QUIET)
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

$(BUILD_STAMP): $(TORCH_STAMP) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]" $(QUIET)
	$(PY) -c "import sparseyolo.extension as e; print('sparseyolo extension built; CUDA kernels:', e.has_cuda_kernels())"
	touch $@

clean-venv:
	rm -rf $(VENV)

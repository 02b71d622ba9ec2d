# gctnet: every target sets up what it needs (virtual environment, packages, dataset) by itself.
#   make test   - create .venv, install gctnet[dev,timm,onnx,ray], get Fashion-MNIST, run the test suite
#   make demo   - the main job: compare plain / SE / GCT ResNet-20 on Fashion-MNIST, write a report
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gctnet-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: test demo install data bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,timm,onnx,ray]'
	@# the C++ CPU kernels, compiled once (~30 s); without a compiler gctnet falls back to PyTorch ops
	-$(BIN)/gctnet kernels --build
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package dataset-fashion-mnist (no run-time download); skipped with a
# note where apt is not available: gctnet then explains where to put the files.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ] || [ -n "$$GCTNET_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist (Debian package)"; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null)) ; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	else echo "note: install Fashion-MNIST yourself (see README: Data)"; fi

test: install data
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install data
	$(BIN)/gctnet compare --preset demo --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"

bench: install
	$(BIN)/gctnet bench all --markdown BENCHMARKS.md

# On a CUDA machine: the Triton kernels' self-check table, the kernel tests on the GPU, the GPU benchmarks
# (eager, into BENCHMARKS-cuda.md), then the compiled ResNet-50 pair with AMP + channels_last.
gpu-check: install
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check needs a CUDA GPU')"
	$(BIN)/gctnet kernels --check --device cuda
	$(BIN)/python -m pytest -q -rs tests/test_kernels.py
	$(BIN)/python -m pytest -q -rs -m gpu
	$(BIN)/gctnet bench all --device cuda --no-compile --markdown BENCHMARKS-cuda.md
	$(BIN)/gctnet bench model --device cuda --compile --amp --channels-last --models resnet50,gct_resnet50 \
	  --input-size 3,224,224 --batch-size 64 --num-classes 1000 --repeats 10

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# clipforge: `make demo` runs the main job, `make test` the test suite; both set up the venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint teacher

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch from the wheels on local disk (a CUDA build that also runs on the CPU)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job, as a service: `clipforge serve` (API + one worker, no external servers) on a free port with a
# fresh data dir under runs/; a shapes-world job (the CPU-sized budget of bench/configs/demo.json) submitted
# over HTTP with the client, followed with a progress bar; its ONNX student downloaded and evaluated with
# onnxruntime on held-out test renders beside the teacher; then the service is stopped.
demo: $(STAMP)
	$(BIN)/python -m client.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Retrain the bundled teacher (about 40 minutes on 2 cores).
teacher: $(STAMP)
	$(BIN)/python -m bench.train_teacher --steps 3000 --out core/teachers/bundled/shapes-mini

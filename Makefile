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

SHAPE8 := circle,square,triangle,star,hexagon,cross,heart,ring

# The main job: the teacher's zero-shot accuracy, then a customization run on the shapes teacher
# (a CPU-sized budget, bench/configs/demo.json) whose exported ONNX student is evaluated with
# onnxruntime on held-out test renders beside the teacher.
demo: $(STAMP)
	$(BIN)/clipforge teachers eval --teacher shapes-mini --task shape8 --json
	$(BIN)/clipforge customize --config bench/configs/demo.json --classes $(SHAPE8) --out runs/demo
	$(BIN)/clipforge bench student --onnx runs/demo/student.onnx --task shape8

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Retrain the bundled teacher (about 40 minutes on 2 cores).
teacher: $(STAMP)
	$(BIN)/python -m bench.train_teacher --steps 3000 --out core/teachers/bundled/shapes-mini

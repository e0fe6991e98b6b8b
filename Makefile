# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where `make demo` writes the demo dataset (JPEG tree + RecordIO).
DEMO_DIR ?= demo_data

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

test: $(STAMP)
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_DIR)

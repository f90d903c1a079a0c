# peftlab: `make demo` (set-up + the main job) and `make test` (set-up + the tests) on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PEFTLAB_DATA ?= $(abspath ../shared/data)
export PEFTLAB_DATA

.PHONY: setup demo test fuzz bench clean

setup: $(VENV)/.installed

# torch + torchvision first (pip takes them from this machine's local wheel store),
# then everything else under the verified version pins.
$(VENV)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c requirements/lock.txt torchaudio==2.11.0 -e '.[all]'
	$(PY) -c "import peftlab, peftlab_protein, torchvision, torchaudio, timm; print('peftlab', peftlab.__version__, 'installed')"
	touch $@

# the embedded-default paper table: 3 domains x 6 methods on tiny random-init backbones and built-in tasks
# (DEMO_ARGS: extra sweep options, e.g. DEMO_ARGS="--output /tmp/demo --set trainer.max_epochs=1")
demo: setup
	$(VENV)/bin/peftlab sweep --config configs/paper/demo_cpu.yaml $(DEMO_ARGS)

# the suite (property tests on their fixed, derandomized examples), then one pass of the property
# tests on fresh random examples (HYPOTHESIS_PROFILE=explore, same counts): a failure prints the
# example and a @reproduce_failure blob to replay it
test: setup
	$(VENV)/bin/pytest
	HYPOTHESIS_PROFILE=explore PEFTLAB_FUZZ_SCALE=1 $(VENV)/bin/pytest -m hostile

# a bug hunt: the property tests on fresh random examples, 10x as many (PEFTLAB_FUZZ_SCALE=N for N x)
fuzz: setup
	HYPOTHESIS_PROFILE=explore $(VENV)/bin/pytest -m hostile

bench: setup
	$(VENV)/bin/python benchmarks/method_cost.py --domain protein
	$(VENV)/bin/python benchmarks/method_cost.py --domain medical --rounds 1
	$(VENV)/bin/python benchmarks/method_cost.py --domain speech --batch 4 --rounds 1
	$(VENV)/bin/python benchmarks/merged_lora_latency.py
	$(VENV)/bin/python benchmarks/feature_cache.py
	$(VENV)/bin/python benchmarks/prefix_cache.py
	$(VENV)/bin/python benchmarks/gradient_checkpointing.py
	$(VENV)/bin/python benchmarks/esm_attention.py
	$(VENV)/bin/python benchmarks/demo_sweep.py

clean:
	rm -rf $(VENV) lightning_logs runs build dist

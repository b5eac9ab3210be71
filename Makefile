# Two commands do all set-up on a fresh machine:
#   make test   create .venv, install torch (CPU build) then the package with test and tpu extras, run the tests
#   make demo   same install, then run the main job on the embedded default config
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# make bench: quick runs of every benchmark; BENCH_ARGS=--full (their defaults), --check, --only NAMES
BENCH_ARGS ?=

.PHONY: install test test-slow test-all demo base paper-smoke bench clean

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU build from the local file, so nothing pulls a CUDA build.
	$(PIP) install -q $(TORCH)
	# tpu: libtpu for the installed jax, so tests compile TPU programs ahead of time (aot).
	$(PIP) install -q -e '.[test,tpu]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m atommem_jax.demo

# Regenerates the pretrained base that make demo starts from (models/tiny_base; its README.md
# is the model card), in two resumable phases (rerun the same command): configs/pretrain_tiny.py
# (key-value recall) for BASE_STEPS steps, then configs/pretrain_tiny_facts.py (recall and
# restated facts) from its export for FACTS_STEPS steps, exported over models/tiny_base. The
# defaults are the shipped base's; larger values continue the same runs further.
BASE_STEPS ?= 600
FACTS_STEPS ?= 800
base: $(STAMP)
	$(PY) -m atommem_jax.train --config configs/pretrain_tiny.py --workdir workdir/pretrain_tiny \
	  --config.pretrain.steps=$(BASE_STEPS) --config.export.hf_dir=workdir/pretrain_tiny/hf
	$(PY) -m atommem_jax.train --config configs/pretrain_tiny_facts.py \
	  --workdir workdir/pretrain_tiny_facts --config.model.hf_dir=workdir/pretrain_tiny/hf \
	  --config.pretrain.steps=$(FACTS_STEPS) --config.export.hf_dir=models/tiny_base

# configs/qwen3_8b_a800.py end to end on this CPU (a 2-layer random Qwen3, the real tokenizer,
# the shipped HotpotQA/MuSiQue slices): build, collect, SFT, GRPO, evaluate, export.
paper-smoke: $(STAMP)
	$(PY) -m atommem_jax.paper_smoke

bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

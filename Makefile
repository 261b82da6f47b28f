# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch (lies on this machine's disk). GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo demo-dpo test test-fast lint format clean gpu-check browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m sftforge demo

# SFT → DPO: preference-train the demo model (made first when missing) on examples/demo/pairs.jsonl
demo-dpo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m sftforge demo --stage dpo

# The web chat page test drives the OS's Chromium (Debian package, not a Playwright download). As root, or with
# password-less sudo, this installs chromium + fonts-noto-cjk when missing; otherwise it says why (never fails).
browser:
	@bash .ci/install-browser

test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# On a CUDA machine: what the CPU suite cannot check (packed attention on the device, flash-attn, bf16 fp32-master
# full fine-tuning, fp16 loss scaling with the guard, QLoRA + merge, Liger, ZeRO-3, tokens/s and MFU), in minutes.
# Prints PASS/FAIL/SKIP with a figure per check; writes outputs/gpu-check/report.md. README: "Checking a GPU machine".
gpu-check: $(STAMP)
	$(PY) tests/gpu/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(STAMP)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) outputs .pytest_cache

# Speed vs TRL on the same work (benchmarks/README.md): ~20 min on 2 cores; BENCH_REPEATS=1 BENCH_DATASETS=glaive
# for a quick look. Writes benchmarks/RESULTS.md.
.PHONY: bench
bench: $(STAMP)
	$(PY) -c "import sys, trl; sys.exit(int(trl.__version__.split('.')[0]) < 1)" 2>/dev/null \
		|| $(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bench.py

# "Millions of rows" (issue 15; benchmarks/README.md "Scale"): peak RSS and preprocessing rows/s of 1-step runs on
# 100k/300k/1M-row synthetic sets, sftforge vs TRL. ~25-60 min on 2 cores (estimated); BENCH_SCALE_SIZES=2000,4000
# for a smoke run.
# Writes benchmarks/SCALE_RESULTS.md.
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -c "import sys, trl; sys.exit(int(trl.__version__.split('.')[0]) < 1)" 2>/dev/null \
		|| $(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/scale_bench.py

# cxrgen — two commands for people: `make demo` (set up + run the pipeline on the embedded demo corpus)
# and `make test` (set up + run the test suite; CI calls exactly this via .ci/run).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat envs/requirements.txt pyproject.toml | sha256sum | cut -c1-12)
CORES ?= 2
# glibc malloc tuning cuts conv-heavy CPU steps by ~25% (verified-stack notes); offline hub; per-job threads.
export MALLOC_MMAP_THRESHOLD_ := 17179869184
export MALLOC_TRIM_THRESHOLD_ := 17179869184
export MALLOC_TOP_PAD_ := 536870912
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo report test test-cluster test-fast lint clean

$(STAMP): envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r envs/requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# One thread per job: the demo's models are small, so a second thread speeds a job up only 1.38x (0.74 -> 0.54 s per
# demo LDM step) while two one-thread jobs side by side run at 0.63 s per step each (1.7x the throughput; measured
# with the demo UNet, batch 16). Snakemake then keeps both cores busy with independent branches.
DEMO_THREADS ?= 1
demo: setup
	$(BIN)/snakemake --cores $(CORES) --max-threads $(DEMO_THREADS)
	$(BIN)/snakemake --report results/report.html
	@echo "Report: results/report.html   Data report: results/reports/data/data_report.html"

report: setup
	$(BIN)/snakemake --report results/report.html

# The whole suite: lint, library/workflow tests (~23 min on 2 cores), then the cluster tests (~24 min): a real
# single-node SLURM on localhost (root + Debian packages; scripts/slurm-local.sh) runs the tiny DAG through the SLURM
# executor. Without root/apt they are skipped locally and fail on CI (CI=true).
test: setup
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/python -m pytest -q tests --ignore=tests/cluster
	$(BIN)/python -m pytest -q -m cluster tests/cluster

# The cluster tests alone: GPU-partition placement, concurrent MLflow logging, time-limit resubmission + resume.
test-cluster: setup
	$(BIN)/python -m pytest -q -m cluster tests/cluster

# Without SLURM (quick iteration): lint + library/workflow tests.
test-fast: setup
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/python -m pytest -q tests --ignore=tests/cluster

lint: setup
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake

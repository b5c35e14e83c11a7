# Two commands for a fresh Debian/Ubuntu machine (see README.md):
#   make demo   install, train the default model briefly, export, serve, classify
#   make test   install, run the test suite
#   make docs           the documentation site, built strictly into site/ (make docs-check: and a screenshot of it)
#   make deploy-check   build the serve image and run the Compose deployment for real (podman)
#   make gpu-wheels     the wheels scripts/gpu_check.sh installs on a GPU machine without network, in .whl/
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a GPU host, e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := dataset-fashion-mnist cmake g++ binutils
# Only some tests use these: the deployment tests validate configs with the real tools
# (docker-compose config, promtool check config, nginx -t); wrk drives the overload test; perf_analyzer
# (scripts/perf_analyzer.py) links to libb64; chromium renders the built docs site (tests/test_docs_site.py).
# On a systemd host Debian starts the nginx and prometheus services on install: `make test
# TEST_APT_PACKAGES=` skips them, and those tests skip with a reason.
TEST_APT_PACKAGES ?= docker-compose prometheus nginx wrk libb64-0d chromium
# scripts/deploy_check.sh's own list (it installs them itself when run alone, e.g. by the tests).
DEPLOY_APT_PACKAGES := podman runc netavark aardvark-dns iptables debootstrap docker-compose
STAMP := $(VENV)/.elunet-installed

.PHONY: setup system-deps demo test docs docs-check deploy-check gpu-wheels clean

setup: $(STAMP)

system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES) $(EXTRA_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	python3 -m venv --help >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml Makefile deploy/serve.lock
	$(MAKE) system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -c deploy/serve.lock -e '.[dev]'
	touch $@

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: setup
	@$(MAKE) --no-print-directory system-deps EXTRA_APT_PACKAGES="$(TEST_APT_PACKAGES)"
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# NO_MKDOCS_2_WARNING: Material for MkDocs prints a banner about its end of life (May 2027) on every build; the
# docs page on development notes it (open points), so that the build's own warnings stand out.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --clean --site-dir site

# The built home page rendered by headless Chromium (Debian's chromium), so a broken theme or layout is seen.
docs-check: docs
	@$(MAKE) --no-print-directory system-deps EXTRA_APT_PACKAGES=chromium
	$(PY) scripts/docs_screenshot.py site site/home.png

deploy-check: setup
	@$(MAKE) --no-print-directory system-deps EXTRA_APT_PACKAGES="$(DEPLOY_APT_PACKAGES)"
	$(SUDO) env PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/deploy_check.sh

# pyproject's gpu-check extra with its dependencies, pinned to this venv's versions (what `make test`
# runs), for the GPU machine's Python; its image's own packages are left out (scripts/gpu_wheels.py).
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels:
	@test -x $(PY) || { echo "no $(PY): run make setup first (the wheels are pinned to its versions)"; exit 1; }
	$(PY) scripts/gpu_wheels.py --dest .whl --python-version $(GPU_PYTHON_VERSION)

clean:
	rm -rf $(VENV) runs build dist site *.egg-info

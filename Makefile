# Two commands do everything on a fresh machine (see README.md):
#   make book   install, then build the HTML book into _build/html (notebooks executed, cached)
#   make test   install (and the system packages), then run every test: unit, property,
#               notebooks (nbmake), grading, built book
# What each target needs: install = Python (a venv in .venv); system = root on Debian, else it only
# says what is missing; lint = ruff alone; test-fast = install; test = install + system.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The exact torch lives here only: a local CPU wheel on our machines. The package itself asks for
# torch>=2.1, so that in Colab the install cell keeps Colab's own CUDA build.
TORCH  := torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# nbmake skips any path with a _build folder in it, so the executed copy lives beside _build.
EXECUTED := executed-book
# Sphinx warnings (broken references, missing images, unknown directives) fail the build;
# --keep-going lists all of them first.
STRICT := -W --keep-going
# What the book is built from (the executed copy gets the same files).
BOOK_SOURCES := _config.yml _toc.yml _ext _static intro.md glossary.md bibliography.md references.bib chapters exercises
# A copy of the book whose notebooks are already executed (or whose outputs do not matter) gets the
# book's config with execution switched off: an override merged into the YAML, never a text edit.
NO_EXECUTE := '{execute: {execute_notebooks: "off"}}'
BOOK_CONFIG := $(BIN)/python .ci/book_config.py _config.yml
RUFF_CHECK := check attn_course tests benchmarks

.PHONY: install system browser book test test-fast lint exercises clean linkcheck

# The Python environment only: never apt, never root.
install: $(STAMP)

# The system packages the tests use: bubblewrap (`bwrap`, the grader runs every upload in it) and
# Debian's chromium (the browser test; never `playwright install`, which downloads one). As root
# on Debian/Ubuntu (CI here) the missing ones are installed through apt; anywhere else, or if apt
# fails, the tests that need them skip and say how to install them. Never fails the build.
system:
	@missing=""; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ] || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system: installing$$missing through apt"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing) >/dev/null 2>&1 \
			|| echo "system: could not install$$missing; the tests that need it will skip"; \
	else echo "system: no$$missing here: the tests that need it will skip (sudo apt-get install$$missing)"; fi

browser: system

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[book,dev]"
	# timm (only for the ViT parity test) without its dependencies: it would pull torchvision, whose
	# only wheel for this torch is a CUDA build that cannot load beside the CPU torch (and then
	# breaks transformers too). The test imports timm against stand-in torchvision modules.
	$(PIP) install -q --no-deps "timm>=1.0"
	# Register this environment's Python as the "python3" kernel the notebooks name.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

book: install
	$(BIN)/jupyter-book build . --builder html $(STRICT)
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# Every notebook is executed once: nbmake runs them in a copy of the book (--overwrite keeps
# the outputs there), then the book is built from that copy with execution switched off and
# its HTML is checked, as files and in headless Chromium with the network blocked (chapter
# screenshots go to $(EXECUTED)/_build/browser-screenshots).
test: install system
	rm -rf $(EXECUTED) && mkdir -p $(EXECUTED)
	cp -r $(BOOK_SOURCES) $(EXECUTED)/
	rm -rf $(EXECUTED)/exercises/source
	$(BOOK_CONFIG) $(EXECUTED)/_config.yml $(NO_EXECUTE)
	$(BIN)/ruff $(RUFF_CHECK)
	$(BIN)/pytest -m "not book" tests --ignore=tests/submissions \
		--nbmake --overwrite --nbmake-timeout=300 $(EXECUTED)/chapters $(EXECUTED)/exercises --durations=15
	$(BIN)/jupyter-book build $(EXECUTED) --builder html $(STRICT)
	BOOK_HTML=$(EXECUTED)/_build/html BROWSER_ARTIFACTS=$(EXECUTED)/_build/browser-screenshots \
		$(BIN)/pytest -m book tests/book --durations=5

# External links in the book, checked from a copy with execution off (only the links matter).
# Needs the network: says it is skipped when there is none.
LINKCHECK := _build/linkcheck-src
linkcheck: install
	@if ! $(BIN)/python -c "import socket; socket.create_connection(('github.com', 443), timeout=5)" 2>/dev/null; then \
		echo "linkcheck: skipped (no network)"; exit 0; fi; \
	rm -rf $(LINKCHECK) && mkdir -p $(LINKCHECK) && cp -r $(BOOK_SOURCES) $(LINKCHECK)/ && \
	$(BOOK_CONFIG) $(LINKCHECK)/_config.yml $(NO_EXECUTE) && \
	$(BIN)/jupyter-book build $(LINKCHECK) --builder linkcheck $(STRICT) && echo "linkcheck: passed"

# Unit tests only (no notebooks, no grading run): the quick loop while writing code.
test-fast: install
	$(BIN)/pytest -m "not book and not slow" tests --ignore=tests/submissions -q

# ruff alone (no torch, no install): the environment's ruff if `make install` made one, else a
# small venv of its own in $(LINT_VENV).
LINT_VENV := _build/lint-venv
lint:
	@if [ -x $(BIN)/ruff ]; then ruff=$(BIN)/ruff; else \
		test -x $(LINT_VENV)/bin/ruff || { $(PYTHON) -m venv $(LINT_VENV) \
			&& $(LINT_VENV)/bin/python -m pip install -q --disable-pip-version-check "ruff>=0.5"; }; \
		ruff=$(LINT_VENV)/bin/ruff; fi; \
	echo "$$ruff $(RUFF_CHECK)"; $$ruff $(RUFF_CHECK)

# Regenerate exercises/*.ipynb (learner versions) from exercises/source/*.ipynb.
exercises: install
	$(BIN)/attn-course build-exercises

clean:
	rm -rf _build executed-book .pytest_cache .hypothesis

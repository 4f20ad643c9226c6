# Two commands do everything on a fresh machine (see README.md):
#   make book   install, then build the HTML book into _build/html (notebooks executed, cached)
#   make test   install, then run every test: unit, property, notebooks (nbmake), grading, built book
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

.PHONY: install book test test-fast lint exercises clean browser linkcheck

# The grader runs every upload in bubblewrap (`bwrap`). As root on Debian/Ubuntu (CI here) it is
# installed through apt when missing; anywhere else, or if apt fails, the sandboxed grading
# tests skip and say how to install it. Never fails the build.
install: $(STAMP)
	@if ! command -v bwrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] \
		&& command -v apt-get >/dev/null 2>&1; then \
		echo "install: installing bubblewrap (the grader's sandbox) through apt"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
			|| echo "install: could not install bubblewrap; the sandboxed grading tests will skip"; \
	fi

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
test: install browser
	rm -rf $(EXECUTED) && mkdir -p $(EXECUTED)
	cp -r $(BOOK_SOURCES) $(EXECUTED)/
	rm -rf $(EXECUTED)/exercises/source
	sed -i 's/^  execute_notebooks: cache$$/  execute_notebooks: "off"/' $(EXECUTED)/_config.yml
	grep -q 'execute_notebooks: "off"' $(EXECUTED)/_config.yml
	$(BIN)/ruff check attn_course tests benchmarks
	$(BIN)/pytest -m "not book" tests --ignore=tests/submissions \
		--nbmake --overwrite --nbmake-timeout=300 $(EXECUTED)/chapters $(EXECUTED)/exercises --durations=15
	$(BIN)/jupyter-book build $(EXECUTED) --builder html $(STRICT)
	BOOK_HTML=$(EXECUTED)/_build/html BROWSER_ARTIFACTS=$(EXECUTED)/_build/browser-screenshots \
		$(BIN)/pytest -m book tests/test_book_html.py tests/test_mechanism_sources.py tests/test_browser.py --durations=5

# The browser test drives Debian's chromium (never `playwright install`, which downloads one).
# As root on Debian (CI) a missing chromium is installed; elsewhere the test says how and skips.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; \
	else echo "no chromium: the browser test will be skipped (sudo apt-get install chromium)"; fi

# External links in the book, checked from a copy with execution off (only the links matter).
# Needs the network: says it is skipped when there is none.
LINKCHECK := _build/linkcheck-src
linkcheck: install
	@if ! $(BIN)/python -c "import socket; socket.create_connection(('github.com', 443), timeout=5)" 2>/dev/null; then \
		echo "linkcheck: skipped (no network)"; exit 0; fi; \
	rm -rf $(LINKCHECK) && mkdir -p $(LINKCHECK) && cp -r $(BOOK_SOURCES) $(LINKCHECK)/ && \
	sed -i 's/^  execute_notebooks: cache$$/  execute_notebooks: "off"/' $(LINKCHECK)/_config.yml && \
	$(BIN)/jupyter-book build $(LINKCHECK) --builder linkcheck $(STRICT) && echo "linkcheck: passed"

# Unit tests only (no notebooks, no grading run): the quick loop while writing code.
test-fast: install
	$(BIN)/pytest -m "not book and not slow" tests --ignore=tests/submissions -q

lint: install
	$(BIN)/ruff check attn_course tests benchmarks

# Regenerate exercises/*.ipynb (learner versions) from exercises/source/*.ipynb.
exercises: install
	$(BIN)/attn-course build-exercises

clean:
	rm -rf _build executed-book .pytest_cache .hypothesis

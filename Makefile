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

.PHONY: install book test test-fast lint exercises clean

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
	$(BIN)/jupyter-book build . --builder html
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# Every notebook is executed once: nbmake runs them in a copy of the book (--overwrite keeps
# the outputs there), then the book is built from that copy with execution switched off and
# its HTML is checked.
test: install
	rm -rf $(EXECUTED) && mkdir -p $(EXECUTED)
	cp -r _config.yml _toc.yml intro.md bibliography.md references.bib chapters exercises $(EXECUTED)/
	rm -rf $(EXECUTED)/exercises/source
	sed -i 's/^  execute_notebooks: cache$$/  execute_notebooks: "off"/' $(EXECUTED)/_config.yml
	grep -q 'execute_notebooks: "off"' $(EXECUTED)/_config.yml
	$(BIN)/ruff check attn_course tests benchmarks
	$(BIN)/pytest -m "not book" tests --ignore=tests/submissions \
		--nbmake --overwrite --nbmake-timeout=300 $(EXECUTED)/chapters $(EXECUTED)/exercises --durations=15
	$(BIN)/jupyter-book build $(EXECUTED) --builder html
	BOOK_HTML=$(EXECUTED)/_build/html $(BIN)/pytest -m book tests/test_book_html.py

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

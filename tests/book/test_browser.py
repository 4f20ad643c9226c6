"""The built book in a real browser: headless Chromium, network blocked, every page.

Run by `make test` on the book it built from the executed notebooks (BOOK_HTML). Per page: no
JavaScript errors, no request leaves the book's folder, every image loads and has alt text,
every formula is typeset by the MathJax shipped with the book, no serious or critical axe-core
accessibility violation, and at a phone width (390 px) the page does not scroll sideways
(code and output cells may, inside their own box). Across the book: the navigation reaches
every chapter, the search page finds a chapter by a word in it, and every slider figure
(``attn_course.interactive.slider_figure``) changes its picture when its slider moves.
Screenshots of each chapter (desktop and phone) go to BROWSER_ARTIFACTS (default
_build/browser-screenshots).

Needs playwright (the dev extra) and Debian's chromium (``apt-get install chromium``; `make test`
installs it when run as root on Debian). Never ``playwright install``: it downloads browsers.
CHROMIUM names another Chromium/Chrome binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html")).resolve()
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "_build" / "browser-screenshots"))
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# axe-core impacts that fail the test (minor and moderate ones are reported, not failed)
FAILING_IMPACTS = {"serious", "critical"}

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.book,
    pytest.mark.skipif(not (HTML / "index.html").exists(), reason=f"no built book at {HTML} (run `make test`)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed: pip install -e '.[dev]'"),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: install Debian's with `sudo apt-get install chromium` (make test does it when "
        "run as root on Debian), or set CHROMIUM=/path/to/chrome. Do not run `playwright install`.",
    ),
]


def book_pages() -> list[str]:
    """Every HTML page of the book (not the theme's assets or the notebook sources)."""
    if not HTML.exists():
        return []
    skip = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
    pages = [p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html") if not skip & set(p.relative_to(HTML).parts)]
    return sorted(p for p in pages if p != "index.html")  # index.html only redirects to the root page


def chapter_pages() -> list[str]:
    return [p for p in book_pages() if p.startswith("chapters/")]


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        # --no-sandbox: Chromium refuses to start as root with its sandbox (CI containers run as root)
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Visit:
    """One page loaded offline: what the console said and which requests were blocked."""

    def __init__(self, browser, url: str, viewport: dict):
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.context = browser.new_context(viewport=viewport, service_workers="block")
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url, wait_until="load")
        # Images outside the viewport may be lazy: load them all, then wait for MathJax to finish.
        self.page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15_000)
        self.page.evaluate("window.MathJax && MathJax.startup && MathJax.startup.promise")

    def _route(self, route):
        url = route.request.url
        if urlparse(url).scheme in ("file", "data", "blob", "about"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def close(self):
        self.context.close()


@pytest.fixture(scope="session")
def visit(browser):
    """visit(rel, phone=False): the page loaded once per session and viewport, then reused by each check."""
    cache: dict[tuple[str, bool], Visit] = {}

    def get(rel: str, phone: bool = False) -> Visit:
        key = (rel, phone)
        if key not in cache:
            cache[key] = Visit(browser, (HTML / rel).as_uri(), PHONE if phone else DESKTOP)
        return cache[key]

    yield get
    for v in cache.values():
        v.close()


@pytest.mark.parametrize("rel", book_pages())
def test_no_javascript_errors_and_nothing_from_the_network(visit, rel):
    v = visit(rel)
    assert not v.errors, f"{rel}: console errors: {v.errors}"
    assert not v.blocked, f"{rel}: requests that leave the book (it must work offline): {v.blocked}"


@pytest.mark.parametrize("rel", book_pages())
def test_every_image_loads_and_has_alt_text(visit, rel):
    images = visit(rel).page.evaluate(
        """Array.from(document.querySelectorAll('img')).map(i => ({
            src: i.getAttribute('src') || '', alt: i.getAttribute('alt'), ok: i.complete && i.naturalWidth > 0}))"""
    )
    broken = [i["src"][:80] for i in images if not i["ok"]]
    assert not broken, f"{rel}: images that did not load: {broken}"
    no_alt = [i["src"][:80] for i in images if not (i["alt"] or "").strip() or i["alt"] == i["src"]]
    assert not no_alt, f"{rel}: images without alt text (or with their file name as alt): {no_alt}"


@pytest.mark.parametrize("rel", book_pages())
def test_every_formula_is_typeset(visit, rel):
    page = visit(rel).page
    result = page.evaluate(
        """() => {
            const maths = Array.from(document.querySelectorAll('.math'));
            const main = document.querySelector('main') || document.body;
            return {
              mathjax: !!(window.MathJax && MathJax.version),
              untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
              errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 60)),
              raw: (main.innerText.match(/\\\\\\(|\\\\\\[|\\$\\$/g) || []).length,
              count: maths.length,
            };
        }"""
    )
    if result["count"]:
        assert result["mathjax"], f"{rel}: has formulas but MathJax did not load"
    assert not result["untypeset"], f"{rel}: formulas left as raw LaTeX: {result['untypeset'][:5]}"
    assert not result["errors"], f"{rel}: TeX errors: {result['errors'][:5]}"
    assert result["raw"] == 0, f"{rel}: raw math delimiters visible in the text ({result['raw']})"


@pytest.fixture(scope="session")
def axe_source() -> str:
    axe = pytest.importorskip("axe_playwright_python.base", reason="axe-playwright-python (dev extra) ships axe-core")
    return axe.AXE_FILE_PATH.read_text(encoding="utf-8")


@pytest.mark.parametrize("rel", book_pages())
def test_no_serious_accessibility_violations(visit, axe_source, rel):
    page = visit(rel).page
    page.add_script_tag(content=axe_source)
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} -- e.g. {v['nodes'][0]['html'][:120]}"
        for v in results["violations"]
        if v["impact"] in FAILING_IMPACTS
    ]
    assert not bad, f"{rel}: axe-core violations:\n" + "\n".join(bad)


# Overflowing children of these may scroll inside their own box; the page itself must not.
SCROLLS_INSIDE = "pre, .cell_output, .output, .highlight, table, .MathJax, mjx-container, .table-wrapper, .math"


@pytest.mark.parametrize("rel", book_pages())
def test_phone_width_does_not_scroll_sideways(visit, rel):
    v = visit(rel, phone=True)
    wide = v.page.evaluate(
        f"""() => {{
            const width = document.documentElement.clientWidth;
            const out = [];
            for (const el of document.querySelectorAll('.bd-header-article *, article.bd-article *')) {{
                if (el.closest({json.dumps(SCROLLS_INSIDE)})) continue;
                const r = el.getBoundingClientRect();
                if (r.width > 0 && r.right > width + 1)
                    out.push(el.tagName.toLowerCase() + '.' + (el.getAttribute('class') || '') + ' right=' + Math.round(r.right));
            }}
            return {{scroll: document.documentElement.scrollWidth, width, out: out.slice(0, 5)}};
        }}"""
    )
    assert wide["scroll"] <= wide["width"] + 1, f"{rel}: the page scrolls sideways at 390 px: {wide}"
    assert not wide["out"], f"{rel}: elements stick out of a 390 px screen: {wide['out']}"
    if rel.startswith("chapters/"):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        v.page.screenshot(path=str(ARTIFACTS / (rel.replace("/", "_").removesuffix(".html") + "-phone.png")))


@pytest.mark.parametrize("rel", chapter_pages())
def test_chapter_screenshot(visit, rel):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (rel.replace("/", "_").removesuffix(".html") + ".png")
    visit(rel).page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_navigation_reaches_every_chapter(visit):
    """From the root page, following the sidebar's links reaches every chapter and exercise."""
    root = visit("intro.html").page.evaluate("Array.from(document.querySelectorAll('nav.bd-docs-nav a')).map(a => a.href)")
    reached = {Path(urlparse(u).path).resolve().relative_to(HTML).as_posix() for u in root if u.startswith("file:")}
    wanted = {p for p in book_pages() if p.startswith(("chapters/", "exercises/"))}
    assert wanted, "no chapters were built"
    assert not wanted - reached, f"not linked from the navigation: {sorted(wanted - reached)}"
    # and the "next" link walks the whole book in order
    page, seen = "intro.html", ["intro.html"]
    for _ in range(200):
        nxt = visit(page).page.evaluate("(document.querySelector('a.right-next') || {}).href || null")
        if not nxt:
            break
        page = Path(urlparse(nxt).path).resolve().relative_to(HTML).as_posix()
        seen.append(page)
    assert not wanted - set(seen), f"the 'next' links skip: {sorted(wanted - set(seen))}"


def distinctive_word(rel: str) -> str:
    """A word of the chapter's title that no other chapter title has (the search must find its page)."""
    titles = {}
    for p in chapter_pages():
        html = (HTML / p).read_text(encoding="utf-8")
        titles[p] = re.search(r"<title>(.*?)</title>", html, re.S).group(1).split("—")[0].split("&#8212;")[0]
    others = " ".join(t for p, t in titles.items() if p != rel).lower()
    words = [w for w in re.findall(r"[A-Za-z]{5,}", titles[rel]) if w.lower() not in others]
    assert words, f"no distinctive word in the title of {rel}: {titles[rel]!r}"
    return max(words, key=len)


def test_search_finds_a_chapter_by_a_word_in_it(browser):
    rel = chapter_pages()[0]
    word = distinctive_word(rel)
    v = Visit(browser, (HTML / "search.html").as_uri() + f"?q={word}", DESKTOP)
    try:
        v.page.wait_for_selector("#search-results li a, ul.search li a", timeout=20_000)
        hits = v.page.evaluate("Array.from(document.querySelectorAll('ul.search li a')).map(a => a.href)")
        assert any(rel in h for h in hits), f"searching {word!r} did not find {rel}: {hits}"
        assert not v.errors, f"search page console errors: {v.errors}"
    finally:
        v.close()


def slider_figures_respond(page) -> list[str]:
    """Move every slider figure's slider on the page; return the ones whose picture did not change."""
    return page.evaluate(
        """() => {
            const stuck = [];
            for (const slider of document.querySelectorAll('input.anim-slider')) {
                const img = slider.closest('.animation').querySelector('img');
                const before = img.src;
                const target = slider.value == slider.max ? slider.min : slider.max;
                slider.value = target;
                slider.dispatchEvent(new Event('input', {bubbles: true}));
                if (img.src === before || !img.src.startsWith('data:image/')) stuck.push(slider.id);
            }
            return stuck;
        }"""
    )


@pytest.mark.parametrize("rel", book_pages())
def test_slider_figures_on_the_page_respond(visit, rel):
    page = visit(rel).page
    if not page.locator("input.anim-slider").count():
        pytest.skip("no slider figure on this page")
    assert not slider_figures_respond(page), f"{rel}: a slider moved but its figure did not change"


def test_a_slider_figure_responds_offline(browser, tmp_path):
    """The same check on a page made here with slider_figure, so the player is tested even before a chapter uses it."""
    from attn_course.interactive import slider_figure

    def draw(fig, h):
        ax = fig.subplots()
        ax.bar(range(5), [h**k for k in range(5)])
        ax.set_title(f"h = {h}")

    widget = slider_figure(draw, [0.5, 1.0, 1.5], "h", alt="bars that grow with h")
    (tmp_path / "slider.html").write_text(f"<!doctype html><html lang='en'><title>t</title><main>{widget.data}</main></html>")
    v = Visit(browser, (tmp_path / "slider.html").as_uri(), PHONE)
    page = v.page
    page.wait_for_function("document.querySelector('input.anim-slider') && window.anim" + re.search(r"anim(\w+)\.set_frame", widget.data).group(1))
    assert page.locator("output").text_content() == "0.5"
    assert not slider_figures_respond(page)
    assert page.locator("output").text_content() == "1.5"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert not v.errors and not v.blocked, (v.errors, v.blocked)
    v.close()

"""Fixes to the theme's HTML that the browser test asks for (a Sphinx extension of this book).

* No thebe. Jupyter Book always loads sphinx-thebe, which adds ``const THEBE_JS_URL = ...``
  (a CDN URL) to every page twice: the second declaration is a JavaScript error ("Identifier
  'THEBE_JS_URL' has already been declared"). The book has no kernel (Colab is where code
  runs), so thebe's scripts go, and any other inline script a page would run twice.
* Search from disk. Sphinx's search page fetches each hit's page to show a summary; opened
  from ``file://`` the browser refuses the fetch (an error per hit). There the summaries are
  skipped; served over HTTP (GitHub Pages) they stay.
* The references list. sphinxcontrib-bibtex marks it ``role="list"`` with
  ``role="doc-biblioentry"`` items, which axe-core reports as a list without list items
  (critical); the items become ``listitem``.
"""

from __future__ import annotations

SEARCH_FROM_DISK = 'if (location.protocol === "file:") { DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false; }'


def _is_thebe(script) -> bool:
    body = getattr(script, "attributes", {}).get("body", "")
    return "sphinx-thebe" in str(script) or "THEBE_JS_URL" in body


def clean_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen, kept = set(), []
        for script in scripts:
            key = (str(script), tuple(sorted(getattr(script, "attributes", {}).items())))
            if _is_thebe(script) or key in seen:
                continue
            seen.add(key)
            kept.append(script)
        scripts[:] = kept
    body = context.get("body")
    if body and 'class="citation-list"' in body:
        context["body"] = body.replace('role="doc-biblioentry"', 'role="listitem"')


def setup(app):
    app.connect("html-page-context", clean_scripts, priority=900)  # after the themes add theirs
    app.add_js_file(None, body=SEARCH_FROM_DISK, priority=201)  # right after documentation_options.js
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Fixes to the theme's HTML that the browser test asks for (a Sphinx extension of this book).

* No thebe. Jupyter Book always loads sphinx-thebe, which adds ``const THEBE_JS_URL = ...``
  (a CDN URL) to every page twice: the second declaration is a JavaScript error ("Identifier
  'THEBE_JS_URL' has already been declared"). The book has no kernel (Colab is where code
  runs), so thebe's scripts go, and any other inline script a page would run twice.
* No widgets. A widget (an explorer, a tqdm progress bar) needs a kernel; the page has none.
  myst-nb would write an empty placeholder per widget output, and the widgets' state for a
  widget manager loaded from a CDN. The book loads no widget manager (``nb_ipywidgets_js: {}``),
  and here the placeholders and the state go. A chapter shows a kernel-free slider figure
  (``attn_course.interactive.slider_figure``) next to its widget.
* Search from disk. Sphinx's search page fetches each hit's page to show a summary; opened
  from ``file://`` the browser refuses the fetch (an error per hit). There the summaries are
  skipped; served over HTTP (GitHub Pages) they stay.
* The references list. sphinxcontrib-bibtex marks it ``role="list"`` with
  ``role="doc-biblioentry"`` items, which axe-core reports as a list without list items
  (critical); the items become ``listitem``.
"""

from __future__ import annotations

from docutils import nodes

WIDGET_VIEW = '<script type="application/vnd.jupyter.widget-view+json">'

SEARCH_FROM_DISK = 'if (location.protocol === "file:") { DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false; }'


def _dropped(script) -> bool:
    attributes = getattr(script, "attributes", {})
    body = attributes.get("body", "")
    thebe = "sphinx-thebe" in str(script) or "THEBE_JS_URL" in body
    return thebe or attributes.get("type") == "application/vnd.jupyter.widget-state+json"


def clean_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen, kept = set(), []
        for script in scripts:
            key = (str(script), tuple(sorted(getattr(script, "attributes", {}).items())))
            if _dropped(script) or key in seen:
                continue
            seen.add(key)
            kept.append(script)
        scripts[:] = kept
    body = context.get("body")
    if body and 'class="citation-list"' in body:
        context["body"] = body.replace('role="doc-biblioentry"', 'role="listitem"')


def drop_widget_views(app, doctree, docname) -> None:
    for raw in list(doctree.findall(nodes.raw)):
        if raw.get("format") == "html" and raw.astext().lstrip().startswith(WIDGET_VIEW):
            raw.parent.remove(raw)


def setup(app):
    app.connect("doctree-resolved", drop_widget_views)
    app.connect("html-page-context", clean_scripts, priority=900)  # after the themes add theirs
    app.add_js_file(None, body=SEARCH_FROM_DISK, priority=201)  # right after documentation_options.js
    return {"parallel_read_safe": True, "parallel_write_safe": True}

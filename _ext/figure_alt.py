"""Alt text for the figures that notebook code cells draw (a Sphinx extension of this book).

A figure made by a code cell has no alt text of its own: without one, the HTML writer uses the
image's file name. For each such image this extension takes, in order:

1. ``mystnb: image: alt:`` in the code cell's metadata (myst-nb's own option), if set;
2. otherwise the ``% alt: ...`` lines of the nearest markdown cell above the code cell, one per
   figure in order (``%`` starts a MyST comment: the line is not shown on the page);
3. otherwise "Figure: " and the last paragraph of that markdown cell (which introduces the
   figure), shortened to a few sentences.

tests/book/test_browser.py fails on a page whose image has no alt text or its file name as alt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from docutils import nodes

ALT_LINE = re.compile(r"^%\s*alt:\s*(.+)$", re.M)
MAX_CHARS = 300


def _plain(markdown: str) -> str:
    """Markdown as one line of plain text: no comments, roles, code marks, math or emphasis."""
    text = re.sub(r"^%.*$", "", markdown, flags=re.M)
    text = re.sub(r"\{[\w:-]+\}`([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # {term}`x <y>` -> x
    text = re.sub(r"\$\$?([^$]+)\$\$?", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[`*_#>]", "", text)
    return " ".join(text.split())


def _fallback(markdown: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", markdown) if _plain(p)]
    if not paragraphs:
        return ""
    text = _plain(paragraphs[-1])
    if len(text) > MAX_CHARS:  # keep whole sentences
        cut = text.rfind(". ", 0, MAX_CHARS)
        text = text[: cut + 1] if cut > 0 else text[:MAX_CHARS].rsplit(" ", 1)[0] + "..."
    return "Figure: " + text


def add_alt_text(app, doctree: nodes.document) -> None:
    path = Path(app.env.doc2path(app.env.docname))
    if path.suffix != ".ipynb":
        return
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for container in doctree.findall(nodes.container):
        if container.get("nb_element") != "cell_code" or "cell_index" not in container:
            continue
        index = container["cell_index"]
        images = [img for img in container.findall(nodes.image) if not img.get("alt")]
        if not images:
            continue
        above = next(
            ("".join(c["source"]) for c in reversed(cells[:index]) if c["cell_type"] == "markdown"), ""
        )
        alts = [a.strip() for a in ALT_LINE.findall(above)]
        fallback = _fallback(above)
        for k, image in enumerate(images):
            alt = alts[k] if k < len(alts) else fallback
            if alt:
                image["alt"] = alt if len(images) == 1 or k < len(alts) else f"{alt} (part {k + 1} of {len(images)})"


def setup(app):
    app.connect("doctree-read", add_alt_text)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""The glossary: every term is linked from its first use in the book (reading order of _toc.yml).

A page that lands later and uses a term before any page that links it (or a new glossary term)
fails here with the page and the sentence to change. Link a term with MyST's ``{term}`` role:
``{term}`query` `` or ``{term}`queries <query>` ``.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GLOSSARY = ROOT / "glossary.md"


def glossary_terms() -> list[str]:
    """Terms of the ``{glossary}`` block: the unindented lines inside it."""
    text = GLOSSARY.read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.S)
    assert block, "glossary.md has no {glossary} block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith((" ", ":"))]


def pages_in_reading_order() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for ch in part.get("chapters", []):
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    paths = []
    for f in files:
        path = next((p for p in (ROOT / f"{f}.md", ROOT / f"{f}.ipynb") if p.exists()), None)
        if path is not None and path != GLOSSARY:
            paths.append(path)
    return paths


def prose(path: Path) -> str:
    """The page's markdown, without code, math, headings, and roles or links other than {term}."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        text = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # fenced code and directives
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$\n]+\$", " ", text)
    text = re.sub(r"^#.*$", " ", text, flags=re.M)  # headings are not where a term is first used
    text = re.sub(r"\{(?!term\})[\w:-]+\}`[^`]*`", " ", text)  # {cite}, {doc}, ... but not {term}
    text = re.sub(r"\{term\}`([^`]*)`", "\u27e6\\1\u27e7", text)  # {term}`x <y>` -> ⟦x <y>⟧
    text = re.sub(r"`[^`]*`", " ", text)  # inline code
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    return text


def forms(term: str) -> str:
    """A regex for the term and its plural (the last word takes an s, es or ies)."""
    head, last = term.rsplit(" ", 1) if " " in term else ("", term)
    stem = last[:-1] + "(?:y|ies)" if last.endswith("y") and last[-2] not in "aeiou" else re.escape(last) + "(?:s|es)?"
    words = [re.escape(w) for w in head.split()] + [stem]
    return r"\b" + r"[\s-]+".join(words) + r"\b"


ROLE = re.compile(r"\u27e6([^\u27e7<]*?)(?:\s*<([^>]+)>)?\u27e7")  # a {term} role, as prose() writes it


def first_use(term: str) -> tuple[Path, str, bool] | None:
    """(page, context, linked) for the term's first use in reading order; None if never used."""
    pattern = re.compile(forms(term), re.I)
    for path in pages_in_reading_order():
        text = prose(path)
        spans = []  # (start, end, target) of each {term} role
        for m in ROLE.finditer(text):
            spans.append((m.start(), m.end(), (m.group(2) or m.group(1)).strip().lower()))
        uses = [(start, text[start:end], True) for start, end, target in spans if target == term.lower()]
        for m in pattern.finditer(text):
            role = next((s for s in spans if s[0] <= m.start() < s[1]), None)
            if role is None:  # inside a role, the term is either linked (counted above) or part of another term
                uses.append((m.start(), " ".join(text[max(0, m.start() - 60) : m.end() + 60].split()), False))
        if uses:
            _, context, linked = min(uses)
            return path, context, linked
    return None


def test_glossary_has_the_core_terms():
    terms = set(glossary_terms())
    assert {"query", "key", "value", "alignment", "context vector", "head", "mask"} <= terms


@pytest.mark.parametrize("term", glossary_terms())
def test_first_use_links_to_the_glossary(term):
    found = first_use(term)
    if found is None:
        pytest.skip(f"{term!r} is not used on any page yet")
    path, context, linked = found
    rel = path.relative_to(ROOT)
    assert linked, f"{rel}: the first use of {term!r} must link the glossary, e.g. {{term}}`{term}`: ...{context}..."


def test_every_term_role_names_a_glossary_term():
    terms = {t.lower() for t in glossary_terms()}
    for path in pages_in_reading_order():
        for m in ROLE.finditer(prose(path)):
            target = (m.group(2) or m.group(1)).strip().lower()
            assert target in terms, f"{path.relative_to(ROOT)}: {{term}} names {target!r}, not in glossary.md"

"""The module indexes stay true: the labs table of ``attn_course/labs/__init__.py`` and README's
layout table name every module that exists, and every name they give is a module."""

from __future__ import annotations

import re
from pathlib import Path

import attn_course.labs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "attn_course"


def modules_in(folder: Path) -> set[str]:
    """The public modules of a package folder (``name`` for ``name.py``, no ``__init__``)."""
    return {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}


def labs_table(doc: str) -> list[str]:
    """The first column of the reST table in the labs package's docstring."""
    rules = [i for i, line in enumerate(doc.splitlines()) if re.fullmatch(r"=+( +=+)+", line)]
    assert len(rules) == 3, "the labs table: a rule, the header, a rule, the rows, a rule"
    rows = doc.splitlines()[rules[1] + 1 : rules[2]]
    return [re.fullmatch(r"``(\w+)``\s.*", row).group(1) for row in rows]


def readme_row(readme: str, first_cell: str) -> list[str]:
    """The backquoted names of README's layout row whose first cell starts with ``first_cell``."""
    row = next(line for line in readme.splitlines() if line.startswith(f"| {first_cell}"))
    cells = row.strip("|").split("|")
    names = re.findall(r"`([^`]+)`", "|".join(cells[1:]))
    return [Path(n).stem for n in names]


def test_labs_table_names_every_lab_once_and_nothing_else():
    names = labs_table(attn_course.labs.__doc__)
    assert len(names) == len(set(names)), "a lab is listed twice"
    assert set(names) == modules_in(PACKAGE / "labs")


def test_readme_names_every_lab():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = readme_row(readme, "`attn_course/labs/<topic>.py`")
    assert len(names) == len(set(names)), "a lab is listed twice"
    assert set(names) == modules_in(PACKAGE / "labs")


def test_readme_names_every_library_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    library = readme_row(readme, "`attn_course/<mechanism>.py`")
    helpers = [Path(n).stem for row in readme.splitlines() if row.startswith("| `attn_course/")
               for n in re.findall(r"`([^`<]+\.py)`", row.split("|")[1])]
    assert set(library) <= modules_in(PACKAGE), "README names a mechanism module that does not exist"
    assert set(library) | set(helpers) == modules_in(PACKAGE)


def test_the_index_helpers_see_a_missing_or_stale_name():
    doc = "x\n\n=====  ==\nlab    ch\n=====  ==\n``a``  1\n``b``  2\n=====  ==\n"
    assert labs_table(doc) == ["a", "b"]
    assert readme_row("| `pkg/<x>.py` | the `a`, `b.py` |\n", "`pkg/<x>.py`") == ["a", "b"]

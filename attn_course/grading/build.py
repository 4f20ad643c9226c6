"""Learner notebooks from exercise sources.

One source per exercise, ``exercises/source/<id>.ipynb``, holds the solution. Marked regions
become the learner's stubs::

    def softmax(scores):
        \"\"\"...\"\"\"
        # BEGIN SOLUTION
        shifted = scores - scores.amax(dim=-1, keepdim=True)
        ...
        # END SOLUTION

turns into ``raise NotImplementedError("softmax: write your code here")`` at the same
indentation. Cells tagged ``solution`` are dropped whole; in markdown, text between
``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` is dropped. Outputs are never kept.
The learner notebook is written to ``exercises/<id>.ipynb``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*#+\s*END SOLUTION\s*$")
MD_REGION = re.compile(r"<!--\s*BEGIN SOLUTION\s*-->.*?<!--\s*END SOLUTION\s*-->\n?", re.S)
DEF = re.compile(r"^\s*def\s+(\w+)\s*\(")


class MarkerError(ValueError):
    pass


def stub_code(source: str, where: str = "") -> str:
    """Replace each marked solution region with a ``raise NotImplementedError``."""
    out: list[str] = []
    lines = source.split("\n")
    current_def = "this function"
    i = 0
    while i < len(lines):
        line = lines[i]
        m_def = DEF.match(line)
        if m_def:
            current_def = m_def.group(1)
        m = BEGIN.match(line)
        if m:
            j = i + 1
            while j < len(lines) and not END.match(lines[j]):
                if BEGIN.match(lines[j]):
                    raise MarkerError(f"{where}: nested BEGIN SOLUTION at line {j + 1}")
                j += 1
            if j == len(lines):
                raise MarkerError(f"{where}: BEGIN SOLUTION at line {i + 1} has no END SOLUTION")
            out.append(f'{m.group(1)}raise NotImplementedError("{current_def}: write your code here")')
            i = j + 1
            continue
        if END.match(line):
            raise MarkerError(f"{where}: END SOLUTION at line {i + 1} without BEGIN SOLUTION")
        out.append(line)
        i += 1
    return "\n".join(out)


def learner_notebook(source_nb: nbformat.NotebookNode, name: str = "") -> nbformat.NotebookNode:
    nb = copy.deepcopy(source_nb)
    cells = []
    for n, cell in enumerate(nb.cells):
        if "solution" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source = stub_code(cell.source, f"{name} cell {n}")
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = MD_REGION.sub("", cell.source)
        cell.get("metadata", {}).pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    meta = nb.metadata.setdefault("attn_course", {})
    meta["role"] = "learner"
    return nb


def solution_notebook_paths(root: str | Path) -> list[Path]:
    return sorted((Path(root) / "exercises" / "source").glob("*.ipynb"))


def learner_path(source: Path) -> Path:
    return source.parent.parent / source.name


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def build_all(root: str | Path = ".", check: bool = False) -> list[str]:
    """Write (or with ``check``, only compare) every learner notebook; return the stale ones."""
    stale = []
    for src in solution_notebook_paths(root):
        text = render(learner_notebook(nbformat.read(str(src), as_version=4), src.name))
        dest = learner_path(src)
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            stale.append(str(dest))
            if not check:
                dest.write_text(text, encoding="utf-8")
    return stale

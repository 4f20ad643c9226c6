"""Practise where it is taught: each exercise page sits right after the chapter it practises.

Which chapters an exercise practises is said once, in its source notebook's metadata
(``{"attn_course": {"exercise": ..., "practises": ["05_attention_seq2seq"]}}``); the learner
notebook carries the same metadata. The table of contents puts each exercise after the last
of those chapters (other exercises of the same chapter may come between), and each exercise
page links back to every chapter it practises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from attn_course.grading.build import learner_path, solution_notebook_paths

ROOT = Path(__file__).resolve().parents[2]
SOURCES = solution_notebook_paths(ROOT)


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ch["file"] for part in toc["parts"] for ch in part["chapters"]]


def practises(source: Path) -> list[str]:
    meta = json.loads(source.read_text(encoding="utf-8"))["metadata"]["attn_course"]
    chapters = meta.get("practises")
    assert isinstance(chapters, list) and chapters, f"{source.name}: metadata attn_course.practises is missing"
    return chapters


def test_there_is_no_separate_exercises_part():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert all("exercise" not in part.get("caption", "").lower() for part in toc["parts"])


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_exercise_follows_the_chapter_it_practises(source):
    pages = toc_pages()
    page = f"exercises/{source.stem}"
    assert page in pages, f"{page} is not in _toc.yml"
    chapters = practises(source)
    for ch in chapters:
        assert (ROOT / "chapters" / f"{ch}.ipynb").exists(), f"{source.name} practises {ch}, which does not exist"
        assert f"chapters/{ch}" in pages and pages.index(f"chapters/{ch}") < pages.index(page), (
            f"{page} comes before chapters/{ch}, which it practises")
    i = pages.index(page) - 1
    while i >= 0 and pages[i].startswith("exercises/"):
        i -= 1  # another exercise of the same chapter
    assert i >= 0 and pages[i] == f"chapters/{chapters[-1]}", (
        f"{page} must come right after chapters/{chapters[-1]} (after exercises of that chapter), "
        f"not after {pages[i] if i >= 0 else 'nothing'}")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_exercise_page_links_back_to_its_chapters(source):
    for nb_path in (source, learner_path(source)):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        intro = "".join(nb["cells"][0]["source"])
        for ch in practises(source):
            link = f"{{doc}}`../chapters/{ch}`"
            assert link in text, f"{nb_path.relative_to(ROOT)} does not link back to {ch} ({link})"
        assert "{doc}`../chapters/" in intro, f"{nb_path.relative_to(ROOT)}: the first cell should link to its chapter"
        assert nb["metadata"]["attn_course"]["practises"] == practises(source)


def test_chapters_keep_their_order():
    chapters = [p for p in toc_pages() if p.startswith("chapters/")]
    assert chapters == sorted(chapters)

"""Learner notebooks are generated from exercises/source/ and must be up to date."""

import re

import nbformat
import pytest

from attn_course.grading.build import (
    MarkerError,
    build_all,
    learner_notebook,
    learner_path,
    solution_notebook_paths,
    stub_code,
)
from attn_course.grading.catalog import load_exercises


def test_learner_notebooks_are_up_to_date(root):
    stale = build_all(root, check=True)
    assert not stale, f"run `attn-course build-exercises`; out of date: {stale}"


def test_every_exercise_has_a_source_and_every_source_an_exercise(root):
    sources = {p.stem for p in solution_notebook_paths(root)}
    assert sources == set(load_exercises())
    for src in solution_notebook_paths(root):
        nb = nbformat.read(str(src), as_version=4)
        assert nb.metadata["attn_course"]["exercise"] == src.stem


def test_learner_notebooks_hide_the_solutions(root):
    for src in solution_notebook_paths(root):
        learner = nbformat.read(str(learner_path(src)), as_version=4)
        text = "\n".join(c.source for c in learner.cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        ex = load_exercises()[src.stem]
        for task in ex.tasks:
            defined = re.search(rf"^class {task.name}\b", text, re.M)
            if task.driver and defined:  # a class the learner writes: its methods are the stubs
                body = text[defined.start():].split("\nclass ")[0]
                assert re.search(r'raise NotImplementedError\("\w+: write your code here"\)', body), task.name
            else:
                assert f"def {task.name}(" in text, task.name
                assert f'raise NotImplementedError("{task.name}: write your code here")' in text
            assert f'check("{task.name}", {task.name})' in text, f"no check cell for {task.name}"
        solution = nbformat.read(str(src), as_version=4)
        for cell in solution.cells:
            inside = False
            for line in cell.source.splitlines():
                if "BEGIN SOLUTION" in line:
                    inside = True
                elif "END SOLUTION" in line:
                    inside = False
                elif inside and line.strip() and not line.strip().startswith("#"):
                    assert line not in text, f"solution line leaked: {line!r}"


def test_stub_code_keeps_indentation_and_names_the_function():
    src = "def f(x):\n    '''doc'''\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n"
    assert stub_code(src) == "def f(x):\n    '''doc'''\n    raise NotImplementedError(\"f: write your code here\")\n"


@pytest.mark.parametrize("bad", [
    "def f():\n    # BEGIN SOLUTION\n    return 1\n",
    "def f():\n    return 1\n    # END SOLUTION\n",
    "# BEGIN SOLUTION\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n",
])
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(MarkerError):
        stub_code(bad, "nb cell 3")


def test_solution_cells_and_markdown_regions_are_dropped():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("Intro <!-- BEGIN SOLUTION -->the answer is 42<!-- END SOLUTION --> end"),
        nbformat.v4.new_code_cell("print('secret')", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("x = 1", outputs=[nbformat.v4.new_output("stream", text="1")], execution_count=3),
    ])
    out = learner_notebook(nb)
    assert [c.source for c in out.cells] == ["Intro  end", "x = 1"]
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert out.metadata["attn_course"]["role"] == "learner"

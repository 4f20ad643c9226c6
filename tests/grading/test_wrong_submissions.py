"""Plausible wrong submissions score 0, through the sandboxed grader, for every task of every exercise.

Each exercise has a file ``tests/submissions/wrong/<exercise id>.py`` with ``VARIANTS``: a list of
at least three dicts, each mapping every task name to a wrong solution, either its source (a
``def`` or ``class``) or ``(source, words)`` where ``words`` must appear in the task's message
(e.g. the rule it breaks). A wrong solution is what a learner could plausibly write while
skipping or bending the idea the task teaches (the whole score matrix in a tiled task, the wrong
scale, a forgotten offset), not noise: each variant should fail a different case or rule.

Variant ``k`` of an exercise becomes one notebook: the solution's cells, then one cell with
variant ``k``'s definitions (a later ``def`` replaces the solution's). All of them are graded in
one ``attn-course grade`` run, as uploads are; every task named in a variant must score 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attn_course.grading.catalog import load_exercises
from attn_course.grading.sandbox import detect

ROOT = Path(__file__).resolve().parents[2]
WRONG = ROOT / "tests" / "submissions" / "wrong"
SOURCES = ROOT / "exercises" / "source"
MIN_VARIANTS = 3

pytestmark = pytest.mark.slow


def load_variants(exercise_id: str) -> list[dict[str, str | tuple[str, str]]]:
    path = WRONG / f"{exercise_id}.py"
    spec = importlib.util.spec_from_file_location(f"wrong_{exercise_id}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


def _source(entry: str | tuple[str, str]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _words(entry: str | tuple[str, str]) -> str:
    return "" if isinstance(entry, str) else entry[1]


# ATTN_WRONG_ONLY=ex08_kv_cache,ex09_efficient_attention grades only those (while writing them).
EXERCISES = [e for e in sorted(load_exercises())
             if not os.environ.get("ATTN_WRONG_ONLY") or e in os.environ["ATTN_WRONG_ONLY"].split(",")]


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_every_task_has_three_plausible_wrong_solutions(exercise_id):
    assert (WRONG / f"{exercise_id}.py").is_file(), f"write tests/submissions/wrong/{exercise_id}.py"
    variants = load_variants(exercise_id)
    tasks = [t.name for t in load_exercises()[exercise_id].tasks]
    assert len(variants) >= MIN_VARIANTS
    for task in tasks:
        sources = [_source(v[task]) for v in variants if task in v]
        assert len(sources) >= MIN_VARIANTS, f"{exercise_id}.{task}: {len(sources)} wrong solutions"
        assert len(set(sources)) == len(sources), f"{exercise_id}.{task}: two wrong solutions are the same"


def _notebook(exercise_id: str, variant: dict) -> nbformat.NotebookNode:
    nb = nbformat.read(SOURCES / f"{exercise_id}.ipynb", as_version=4)
    nb.metadata["attn_course"] = {"exercise": exercise_id, "role": "submission"}
    code = "\n\n".join(_source(v).strip() for v in variant.values()) + "\n"
    nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if detect("bwrap") is None and detect("auto") is None:
        pytest.skip("no sandbox works here: the wrong submissions are graded sandboxed only")
    uploads = tmp_path_factory.mktemp("wrong")
    expected: dict[str, tuple[str, dict]] = {}
    for exercise_id in EXERCISES:
        for k, variant in enumerate(load_variants(exercise_id)):
            name = f"{exercise_id}_wrong_{k + 1}.ipynb"
            nbformat.write(_notebook(exercise_id, variant), uploads / name)
            expected[name] = (exercise_id, variant)
    report = uploads / "report.json"
    cmd = [sys.executable, "-m", "attn_course.cli", "grade", "--json", str(report), "--jobs", "2", "--quiet",
           "--timeout", "60", "--call-timeout", "30", "--sandbox", "auto", "--", *sorted(map(str, uploads.glob("*.ipynb")))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=uploads,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows: dict[str, dict[str, dict]] = {}
    for r in json.loads(report.read_text())["rows"]:
        rows.setdefault(Path(r["notebook"]).name, {})[r["task"]] = r
    return expected, rows


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_wrong_solutions_score_zero_in_the_sandbox(graded, exercise_id):
    expected, rows = graded
    problems = []
    for name, (ex, variant) in expected.items():
        if ex != exercise_id:
            continue
        got = rows.get(name, {})
        for task, entry in variant.items():
            row = got.get(task)
            if row is None:
                problems.append(f"{name}: no row for {task}")
            elif row["points"] != 0:
                problems.append(f"{name}: {task} scored {row['points']} ({row['message'][:200]})")
            elif _words(entry) and _words(entry) not in row["message"]:
                problems.append(f"{name}: {task}'s message lacks {_words(entry)!r}: {row['message'][:300]}")
    assert not problems, "\n".join(problems)

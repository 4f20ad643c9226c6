"""The grader, both ways: solutions get full marks, untouched learner notebooks get 0, and each
deliberately broken submission in tests/submissions/ is graded as the platform promises.

One `attn-course grade` run (a subprocess, as an instructor would run it) grades them all;
the tests below read its report.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attn_course.grading.build import learner_path, solution_notebook_paths
from attn_course.grading.sandbox import detect
from attn_course.grading.tasks import load_exercises

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
# An upload that broke: not JSON. Written at test time, since a committed notebook must be valid.
BROKEN_UPLOAD = '{"cells": [ this is not JSON, the upload broke\n'


def write_broken_upload(folder: Path) -> Path:
    path = folder / "ex01_not_a_notebook.ipynb"
    path.write_text(BROKEN_UPLOAD)
    return path

pytestmark = pytest.mark.slow
# Graded in bubblewrap where it works, else (honest and broken notebooks only) without a sandbox.
SANDBOX = "bwrap" if detect("bwrap") is not None else "none"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("grade")
    json_path, csv_path = out / "report.json", out / "report.csv"
    sources = [str(p) for p in solution_notebook_paths(ROOT)]
    learners = [str(learner_path(Path(p))) for p in sources]
    broken = write_broken_upload(tmp_path_factory.mktemp("upload"))
    cmd = [sys.executable, "-m", "attn_course.cli", "grade", *sources, *learners, str(SUBMISSIONS), str(broken),
           "--json", str(json_path), "--csv", str(csv_path), "--jobs", "2", "--timeout", "20",
           "--call-timeout", "8", "--quiet", "--sandbox", SANDBOX]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out)
    done = time.monotonic()
    return {"proc": proc, "json": json_path, "csv": csv_path, "done": done, "sources": sources,
            "learners": learners}


def rows_for(report, name):
    data = json.loads(report["json"].read_text())
    rows = {r["task"]: r for r in data["rows"] if Path(r["notebook"]).name == name}
    assert rows, f"no rows for {name}"
    return rows


def test_grading_exits_zero_and_writes_both_reports(report):
    assert report["proc"].returncode == 0, report["proc"].stderr[-3000:]
    data = json.loads(report["json"].read_text())
    assert {"rows", "totals"} <= data.keys()
    header = report["csv"].read_text().splitlines()[0]
    assert header == "notebook,exercise,task,points,max_points,status,message"


def test_every_solution_scores_full_marks(report):
    for src in report["sources"]:
        data = json.loads(report["json"].read_text())
        rows = [r for r in data["rows"] if r["notebook"] == src]
        assert rows and all(r["points"] == r["max_points"] for r in rows), rows


def test_every_untouched_learner_notebook_scores_zero(report):
    data = json.loads(report["json"].read_text())
    for nb in report["learners"]:
        rows = [r for r in data["rows"] if r["notebook"] == nb]
        ex = load_exercises()[rows[0]["exercise"]]
        assert len(rows) == len(ex.tasks)
        assert all(r["points"] == 0 and r["status"] == "not_implemented" for r in rows), rows


# (notebook, task) -> (status, a piece of the message); tasks not listed must get full marks.
EXPECTED = {
    "ex01_raises": {"softmax": ("error", "raised ValueError: I gave up on softmax"),
                    "attend": ("error", "raised ValueError")},
    "ex01_infinite_loop": {"dot_scores": ("timeout", "did not finish in time"),
                           "scaled_dot_scores": ("timeout", "did not finish in time"),
                           "attend": ("timeout", "did not finish in time")},
    "ex01_toplevel_loop": {},
    "ex01_wrong_shape": {"dot_scores": ("failed", "has shape (5, 1); expected (1, 5)"),
                         "scaled_dot_scores": ("failed", "has shape"),
                         "attend": ("error", "RuntimeError")},
    "ex01_wrong_dtype": {"context_vector": ("failed", "dtype torch.float64; expected torch.float32"),
                         "attend": ("failed", "dtype torch.float64")},
    "ex01_nan": {"softmax": ("failed", "NaN or inf"), "attend": ("failed", "NaN or inf")},
    "ex01_mutates": {"softmax": ("failed", "changed its input `scores` in place")},
    "ex01_missing_import": {"context_vector": ("missing", "No module named 'attention_helpers_that_do_not_exist'"),
                            "attend": ("error", "NameError")},
    "ex01_returns_numpy": {"dot_scores": ("failed", "should be a torch.Tensor, got a numpy array"),
                           "scaled_dot_scores": ("failed", "numpy array"),
                           "attend": ("error", "AttributeError")},
    "ex01_not_a_tuple": {"attend": ("failed", "should be a tuple of 2")},
    # In the sandbox the library's masked_softmax cannot even be imported; without it, the
    # imported function is refused because it is not defined in the notebook.
    "ex01_uses_library": {"softmax": ("missing", "must be defined in the notebook" if SANDBOX == "none"
                                      else "no function named `softmax`")},
    "ex01_kills_kernel": {"attend": ("error", "killed the kernel")},
}
CHEATS = ["ex01_cheat_patches_checker", "ex01_cheat_prints_results", "ex01_cheat_writes_report",
          "ex01_cheat_wraps_reference"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_submission_is_graded_as_expected(report, name):
    rows = rows_for(report, f"{name}.ipynb")
    ex = load_exercises()["ex01_softmax_attention"]
    assert set(rows) == {t.name for t in ex.tasks}
    for task, row in rows.items():
        if task in EXPECTED[name]:
            status, piece = EXPECTED[name][task]
            assert row["points"] == 0, row
            assert row["status"] == status, row
            assert piece in row["message"], row
        else:
            assert row["points"] == row["max_points"], row


def test_invalid_notebook_gets_zero_for_every_task(report):
    rows = rows_for(report, "ex01_not_a_notebook.ipynb")
    assert len(rows) == len(load_exercises()["ex01_softmax_attention"].tasks)
    assert all(r["points"] == 0 and "not a valid notebook" in r["message"] for r in rows.values())


@pytest.mark.parametrize("name", CHEATS)
def test_cheats_gain_nothing(report, name):
    rows = rows_for(report, f"{name}.ipynb")
    assert all(r["points"] == 0 for r in rows.values()), rows
    if name == "ex01_cheat_wraps_reference":
        assert "calls `attn_course.masking.masked_softmax`" in rows["softmax"]["message"]


def test_report_is_not_overwritten_after_grading(report):
    """ex01_cheat_writes_report leaves a process behind that rewrites the report 4 s later."""
    time.sleep(max(0.0, report["done"] + 6 - time.monotonic()))
    data = json.loads(report["json"].read_text())
    assert "totals" in data and len(data["rows"]) > 10
    assert report["csv"].read_text().startswith("notebook,exercise,task")


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "attn_course.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_usage_errors_exit_nonzero(tmp_path):
    assert _run_cli("grade", str(tmp_path / "nope.ipynb")).returncode == 2
    assert _run_cli("grade").returncode == 2
    assert _run_cli("grade", str(tmp_path), "--jobs", "0").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run_cli("grade", str(empty))
    assert proc.returncode == 2 and "no .ipynb" in proc.stderr


def test_default_report_is_csv_in_cwd(tmp_path):
    nb = write_broken_upload(tmp_path)
    proc = _run_cli("grade", str(nb), "--quiet", "--sandbox", SANDBOX, cwd=tmp_path)
    assert proc.returncode == 0
    assert (tmp_path / "grade-report.csv").read_text().count("not a valid notebook") == 5


def test_unknown_exercise_is_reported_not_fatal(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "homework.ipynb"
    nbformat.write(nb, path)
    from attn_course.grading.runner import grade_notebook

    rows = grade_notebook(path)
    assert len(rows) == 1 and rows[0].status == "unknown" and rows[0].points == 0

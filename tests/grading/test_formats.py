"""The grader's report in the formats instructors grade in: feedback without expected values,
Gradescope (results.json, the autograder zip run end to end in a simulated /autograder), GitHub
Classroom (the committed files are the generated ones), Canvas (gradebook CSV, grade sheets,
feedback files)."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from attn_course.grading import formats, platforms
from attn_course.grading.catalog import load_exercises
from attn_course.grading.compare import compare_values
from attn_course.grading.report import to_json
from attn_course.grading.runner import Row

ROOT = Path(__file__).resolve().parents[2]
EX01 = "ex01_softmax_attention"


def _messages() -> list[str]:
    """Every failure form of compare.compare_values, as judge() words it (with a case and a hint)."""
    t = torch.tensor([[0.5, 0.25], [0.125, 1.0]])
    got = [
        torch.zeros(2, 3), t.double(), torch.tensor([[0.5, 0.25], [0.125, 7.0]]), torch.tensor([[0.5, float("nan")],
                                                                                               [0.125, 1.0]]),
    ]
    msgs = [compare_values(t, g, 1e-4, 1e-5) for g in got]
    msgs.append(compare_values(torch.tensor([1, 2]), torch.tensor([1, 3]), 0, 0))
    msgs.append(compare_values(0.7, 0.5, 1e-4, 1e-5))
    msgs.append(compare_values((t, 0.7), (t, 0.5), 1e-4, 1e-5))
    msgs.append(compare_values(None, 3, 1e-4, 1e-5))
    return [f"{m} on case 'two rows' (scores: float32 (2, 2)) [0 of 3 cases passed] Hint: subtract the max"
            for m in msgs]


def test_feedback_keeps_what_was_wrong_and_drops_what_was_expected():
    secrets_ = ["(2, 2)", "torch.float32", "0.7", "0.125 1.0"]
    for message in _messages():
        assert "expected" in message
        out = formats.strip_expected(message)
        assert "expected" not in out.lower(), (message, out)
        assert out.endswith("on case 'two rows' (scores: float32 (2, 2)) [0 of 3 cases passed] Hint: subtract the max")
        head = out.split(" on case")[0]
        assert not any(s in head for s in secrets_[:3]), out
    forms = [formats.strip_expected(m).split(" on case")[0] for m in _messages()]
    assert forms[:4] == ["the result has shape (2, 3), the wrong shape", "the result has dtype torch.float64, the wrong dtype",
                         "the result has wrong values at 1 of 4 positions (largest error at index (1, 1): got 7)",
                         "the result contains NaN or inf at 1 of 4 positions (first: NaN at index (0, 1))"]
    assert forms[4] == "the result differs at index (1,): got 3" and forms[5] == "the result is 0.5, which is wrong"
    # a learner's own error text that names a shape pattern loses the pattern only
    assert formats.strip_expected("raised ValueError: q has shape (2,); expected (..., L, d_k) on case 'a' ()") == (
        "raised ValueError: q has shape (2,), the wrong shape on case 'a' ()")


def _report(tmp_path: Path, rows: list[Row], name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(to_json(rows, {"kind": "bwrap"}))
    return path


def _ex01_rows(notebook: str, passed: bool = True, status: str = "failed") -> list[Row]:
    ex = load_exercises()[EX01]
    return [Row(notebook, EX01, t.name, float(t.points) if passed or i else 0.0, t.points,
                "passed" if passed or i else status,
                "passed all 4 cases" if passed or i else "the result is 0.5; expected 0.7 on case 'a' (x: 3)")
            for i, t in enumerate(ex.tasks)]


def test_gradescope_results_from_a_report(tmp_path):
    ex = load_exercises()[EX01]
    report = _report(tmp_path, _ex01_rows("/autograder/submission/ex01.ipynb", passed=False))
    out = tmp_path / "results" / "results.json"
    proc = _cli("gradescope-results", str(report), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["score"] == ex.max_points - ex.tasks[0].points
    assert [t["name"] for t in res["tests"]] == [f"{EX01} · {t.name}" for t in ex.tasks]
    first = res["tests"][0]
    assert (first["score"], first["max_score"], first["status"], first["visibility"]) == (0, ex.tasks[0].points,
                                                                                        "failed", "visible")
    assert first["output"] == "the result is 0.5, which is wrong on case 'a' (x: 3)"
    assert all(t["status"] == "passed" and t["score"] == t["max_score"] for t in res["tests"][1:])
    # The learner sees which sandbox layer graded the work (or that none did).
    rows = _ex01_rows("x.ipynb", passed=True)
    fallback = formats.gradescope_results(rows, [{"kind": "fallback", "layer": "fallback (unprivileged uid)"}])
    assert "graded in the sandbox: fallback (unprivileged uid)" in fallback["output"]
    assert "without a sandbox" in formats.gradescope_results(rows, [{"kind": "none"}])["output"]


def _autograder_tree(tmp_path: Path) -> Path:
    """Gradescope's tree, from the zip `gradescope-build` makes: source/ (the zip), submission/, results/."""
    zip_path = tmp_path / "autograder.zip"
    assert _cli("gradescope-build", "--out", str(zip_path)).returncode == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        assert {"setup.sh", "run_autograder", "course/pyproject.toml", "course/attn_course/cli.py"} <= set(names)
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        z.extractall(root / "source")
        for info in z.infolist():  # zipfile does not restore the executable bit
            os.chmod(root / "source" / info.filename, info.external_attr >> 16 & 0o777)
    (root / "submission").mkdir()
    return root


def _run_autograder(root: Path, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "ATTN_COURSE": command, "ATTN_COURSE_SANDBOX": "none",
           "ATTN_COURSE_TIMEOUT": "60", "PYTHONPATH": str(root / "source" / "course")}
    return subprocess.run([str(root / "source" / "run_autograder")], capture_output=True, text=True, env=env,
                          timeout=600, cwd=root)


def test_gradescope_autograder_end_to_end(tmp_path):
    ex = load_exercises()[EX01]
    root = _autograder_tree(tmp_path)
    command = f"{sys.executable} -m attn_course.cli"
    results = root / "results" / "results.json"
    shutil.copy(ROOT / "exercises" / "source" / f"{EX01}.ipynb", root / "submission" / f"{EX01}.ipynb")
    proc = _run_autograder(root, command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    honest = json.loads(results.read_text())
    assert honest["score"] == ex.max_points and len(honest["tests"]) == len(ex.tasks), honest
    assert all(t["status"] == "passed" and t["score"] == t["max_score"] for t in honest["tests"])

    shutil.rmtree(root / "submission")
    (root / "submission").mkdir()
    shutil.copy(ROOT / "tests" / "submissions" / "ex01_wrong_shape.ipynb", root / "submission" / f"{EX01}.ipynb")
    proc = _run_autograder(root, command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    broken = json.loads(results.read_text())
    failing = [t for t in broken["tests"] if t["status"] == "failed"]
    assert failing and broken["score"] < ex.max_points, broken
    for t in failing:
        assert t["score"] == 0 and t["output"] and "expected" not in t["output"].lower(), t
    (tmp_path / "sample-results.json").write_text(json.dumps({"honest": honest, "broken": broken}, indent=2))


def test_a_crashed_grader_leaves_a_valid_partial_results_json(tmp_path):
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    (root / "submission").mkdir()
    for name in platforms.ZIP_SCRIPTS:
        shutil.copy(ROOT / "autograder" / name, root / "source" / name)
    crash = tmp_path / "crash"
    crash.write_text("#!/bin/sh\necho 'Traceback: the grader fell over' >&2\nexit 1\n")
    crash.chmod(0o755)
    proc = _run_autograder(root, str(crash))
    assert proc.returncode != 0
    res = json.loads((root / "results" / "results.json").read_text())
    assert res == {"score": 0, "output": formats.STOPPED, "tests": []}
    assert [p.name for p in (root / "results").iterdir()] == ["results.json"]  # no temporary file left


def test_stopped_results_say_why(tmp_path):
    log = tmp_path / "grade.log"
    log.write_text("attn-course grade: no .ipynb files found in /autograder/submission\x1b[2J\n")
    out = tmp_path / "results.json"
    assert _cli("gradescope-results", "--stopped", str(log), "--out", str(out)).returncode == 0
    res = json.loads(out.read_text())
    assert res["score"] == 0 and res["tests"] == [] and "no .ipynb files found" in res["output"]
    assert "\x1b" not in res["output"]


def test_classroom_files_are_the_generated_ones():
    exercises = load_exercises()
    files = platforms.classroom_files(exercises)
    for rel, text in files.items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `attn-course classroom-config`"
    tests = json.loads(files[platforms.CLASSROOM_JSON])["tests"]
    assert [(t["name"], t["points"]) for t in tests] == [(e, ex.max_points) for e, ex in exercises.items()]
    workflow = files[platforms.CLASSROOM_WORKFLOW]
    for ex_id in exercises:
        assert f"exercises/{ex_id}.ipynb && attn-course check-points reports/{ex_id}.json --min-fraction 1" in workflow
    assert workflow.count("autograding-command-grader@v1") == len(exercises)


def test_check_points_exit_status_says_pass_or_fail(tmp_path):
    full = _report(tmp_path, _ex01_rows("a.ipynb"), "full.json")
    part = _report(tmp_path, _ex01_rows("b.ipynb", passed=False), "part.json")
    assert _cli("check-points", str(full), "--min-fraction", "1").returncode == 0
    proc = _cli("check-points", str(part), "--min-fraction", "1")
    assert proc.returncode == 1 and "expected" not in proc.stdout
    assert _cli("check-points", str(part), "--min-fraction", "0.5").returncode == 0


def test_students_from_file_names_and_roster(tmp_path):
    assert formats.student_of("up/alice_ex01_softmax_attention.ipynb").login == "alice"
    assert formats.student_of("up/bob/ex01_softmax_attention.ipynb").login == "bob"
    canvas = formats.student_of("dl/carolsmith_LATE_4321_998877_ex01_softmax_attention-1.ipynb")
    assert (canvas.login, canvas.id) == ("carolsmith", "4321")
    roster_path = tmp_path / "roster.csv"
    roster_path.write_text("login,name,id,sis_user_id,section\nalice,Alice Liddell,101,S101,A\n"
                           "dave,Dave Null,104,S104,B\n")
    roster = formats.read_roster(str(roster_path))
    alice = formats.student_of("up/alice_ex01_softmax_attention.ipynb", roster)
    assert (alice.name, alice.id, alice.sis_user_id, alice.section) == ("Alice Liddell", "101", "S101", "A")


def test_export_canvas_sheet_and_feedback(tmp_path):
    ex = load_exercises()[EX01]
    rows = (_ex01_rows("up/alice_ex01_softmax_attention.ipynb")
            + _ex01_rows("up/=bob_ex01_softmax_attention.ipynb", passed=False)
            + [Row("up/carol/ex01_softmax_attention.ipynb", EX01, t.name, 0.0, t.points, "timeout",
                   "the notebook ran past its wall clock and was stopped") for t in ex.tasks])
    report = _report(tmp_path, rows)
    roster = tmp_path / "roster.csv"
    roster.write_text("login,name,id,sis_user_id,sis_login_id,section\nalice,Alice Liddell,101,S101,alice,A\n"
                      "dave,Dave Null,104,S104,dave,B\n")
    out = tmp_path / "out"
    proc = _cli("export", str(report), "--canvas", str(out / "grades.csv"), "--roster", str(roster),
                "--sheet", str(out / "sheet.csv"), "--feedback", str(out / "feedback"))
    assert proc.returncode == 0, proc.stderr

    canvas = list(csv.reader(io.StringIO((out / "grades.csv").read_text())))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", f"{EX01} ({ex.max_points} pts)"]
    assert canvas[1][0] == "Points Possible" and canvas[1][5] == str(ex.max_points)
    by_login = {r[3]: r for r in canvas[2:]}
    assert by_login["alice"] == ["Alice Liddell", "101", "S101", "alice", "A", f"{ex.max_points:g}"]
    assert by_login["'=bob"][5] == f"{ex.max_points - ex.tasks[0].points:g}"  # a formula-like name is quoted
    assert by_login["carol"][5] == "0" and by_login["dave"][5] == ""  # on the roster, nothing graded

    sheet = list(csv.DictReader(io.StringIO((out / f"sheet_{EX01}.csv").read_text())))
    assert list(sheet[0]) == ["student", "file", "status", *[t.name for t in ex.tasks], "total", "max_points"]
    by_student = {r["student"]: r for r in sheet}
    assert by_student["carol"]["status"] == "timeout" and by_student["carol"]["total"] == "0"
    assert all(by_student["carol"][t.name] == "0" for t in ex.tasks)
    assert by_student["alice"]["status"] == "passed" and by_student["alice"]["total"] == f"{ex.max_points:g}"
    assert by_student["dave"]["status"] == "no submission"

    feedback = {p.name: p.read_text() for p in (out / "feedback").iterdir()}
    assert sorted(feedback) == ["_bob.md", "alice.md", "carol.md"]
    assert "the result is 0.5, which is wrong on case 'a' (x: 3)" in feedback["_bob.md"]
    assert not any("expected" in text for text in feedback.values())
    assert "wall clock" in feedback["carol.md"] and "Alice Liddell" in feedback["alice.md"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's attn_course, whatever is installed
    return subprocess.run([sys.executable, "-m", "attn_course.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("message", ["", "x" * 5000])
def test_stopped_results_stay_small(message):
    assert len(formats.gradescope_stopped(message)["output"]) < 400

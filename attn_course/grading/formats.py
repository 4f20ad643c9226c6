"""The grader's JSON report in the formats instructors grade in.

- ``strip_expected``/``feedback_markdown``: feedback for a learner, without the expected values;
- ``gradescope_results``: Gradescope's ``results.json``, one test per task;
- ``canvas_csv``, ``grade_sheets``, ``student_of``: a Canvas gradebook import, an otter-style
  sheet per exercise, and who an upload belongs to.

Every function takes the report's rows (``read_rows``); none re-grades anything.
Which student an upload belongs to, without a roster (``student_of``):
1. a Canvas bulk download, ``login_[LATE_]userid_submissionid_anything.ipynb``: that login and
   Canvas user id;
2. ``login_ex01_anything.ipynb``: what comes before ``_exNN``;
3. else the name of the folder the notebook is in (``alice/ex01_softmax_attention.ipynb``).
A roster (CSV with a ``file`` or ``login`` column, and any of ``name``, ``id``,
``sis_user_id``, ``sis_login_id``, ``section``) is looked up by file name, then by login.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from .report import clean_text, csv_cell, read_regular, read_report, totals
from .runner import Row
from .sandbox import SANDBOXED_KINDS

# --- feedback without expected values --------------------------------------------------------

_END = r"(?=\s+on case '|\s+\[|\s+Hint:|$)"
_RULES = [
    # "has shape (2, 3); expected (3, 2)" and "has dtype torch.float64; expected torch.float32"
    (re.compile(r"(has (shape|dtype) .*?);\s*expected\b.*?" + _END), r"\1, the wrong \2,"),
    # "is 0.5; expected 0.7", "is NoneType; expected float32 (2, 3)"
    (re.compile(r"(\bis .*?);\s*expected\b.*?" + _END), r"\1, which is wrong,"),
    # "differs at index (1,): expected 3, got 4", "(largest error at index (0, 1): expected 0.5, got 0.7)"
    (re.compile(r"\bexpected\s+[^,;]*?,\s*got\b"), "got"),
    # "(first: NaN at index (0, 1), expected 0.5)"
    (re.compile(r",\s*expected\s+[^)]*\)"), ")"),
    # anything else, e.g. a learner's own exception text: "; expected (..., L, d_k)"
    (re.compile(r";?\s*\bexpected\b.*?" + _END, re.I), ""),
]


def strip_expected(message: str) -> str:
    """``message`` without what was expected; what was wrong, the case and the hint stay.

    >>> strip_expected("the result is 0.5; expected 0.7 on case 'x' (n: 3)")
    "the result is 0.5, which is wrong on case 'x' (n: 3)"
    """
    for pattern, repl in _RULES:
        message = pattern.sub(repl, message)
    message = re.sub(r",(\s*(?:\[|Hint:|$))", r"\1", message)  # a comma left before an ending
    message = re.sub(r",\s+on case '", " on case '", message)
    return re.sub(r"\s{2,}", " ", message).strip()


def read_rows(paths: Iterable[str]) -> tuple[list[Row], list[dict[str, Any]]]:
    """The rows and sandbox descriptions of grader JSON reports."""
    rows: list[Row] = []
    sandboxes: list[dict[str, Any]] = []
    for p in paths:
        part, boxes = read_report(p)
        rows += part
        sandboxes += boxes
    return rows, sandboxes


def _by_notebook(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.notebook, []).append(r)
    return out


def feedback_markdown(rows: list[Row], title: str = "") -> str:
    """Markdown feedback on one learner's notebooks: points per task and what went wrong."""
    lines = [f"# Feedback{': ' + clean_text(title) if title else ''}", ""]
    for nb, nb_rows in _by_notebook(rows).items():
        t = totals(nb_rows)[nb]
        lines += [f"## {clean_text(nb_rows[0].exercise)}: {t['points']:g} of {t['max_points']:g} points",
                  "", f"Notebook: `{clean_text(PurePath(nb).name)}`", ""]
        for r in nb_rows:
            lines.append(f"- **{clean_text(r.task)}** ({r.points:g}/{r.max_points:g}, {clean_text(r.status)}): "
                         f"{strip_expected(clean_text(r.message))}")
        lines.append("")
    return "\n".join(lines)


# --- Gradescope ---------------------------------------------------------------------------------

STOPPED = "the grader stopped before finishing"


def gradescope_results(rows: list[Row], sandboxes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Gradescope's results.json: one test per task, feedback without expected values."""
    tests = []
    for r in rows:
        name = f"{r.exercise} · {r.task}" if r.task != "-" else f"{PurePath(r.notebook).name} · {r.exercise}"
        tests.append({"name": clean_text(name), "score": r.points, "max_score": r.max_points,
                      "visibility": "visible", "status": "passed" if r.status == "passed" else "failed",
                      "output": strip_expected(clean_text(r.message))})
    score = sum(r.points for r in rows)
    total = sum(r.max_points for r in rows)
    output = (f"{score:g} of {total:g} points." if rows
              else "No notebook was found in the submission: upload your exercise notebook(s) (.ipynb).")
    if sandboxes and any(s.get("kind") not in SANDBOXED_KINDS for s in sandboxes):
        output += " (graded without a sandbox)"
    elif sandboxes:
        layers = sorted({str(s.get("layer") or s.get("kind")) for s in sandboxes})
        output += f" (graded in the sandbox: {', '.join(layers)})"
    return {"score": score, "output": output, "visibility": "visible", "tests": tests}


def gradescope_stopped(detail: str = "") -> dict[str, Any]:
    """A valid results.json for a run that did not finish: 0 points, and why where known."""
    tail = " ".join(clean_text(detail).split()[-60:])[-300:]  # the last lines say why
    return {"score": 0, "output": STOPPED + (f": {tail}" if tail else ""), "tests": []}


# --- students, Canvas, grade sheets -------------------------------------------------------------

_CANVAS = re.compile(r"^(?P<login>[^_]+)_(?:LATE_)?(?P<id>\d+)_\d+_")
_BEFORE_EX = re.compile(r"^(?P<login>.+?)_ex\d\d")
ROSTER_KEYS = ("name", "id", "sis_user_id", "sis_login_id", "section")


@dataclass(frozen=True)
class Student:
    login: str
    name: str = ""
    id: str = ""
    sis_user_id: str = ""
    sis_login_id: str = ""
    section: str = ""


def read_roster(path: str) -> dict[str, Student]:
    """Students by file name and by login, from a roster CSV (see the module docstring)."""
    text = read_regular(path).decode("utf-8-sig")
    out: dict[str, Student] = {}
    for rec in csv.DictReader(io.StringIO(text)):
        rec = {(k or "").strip().lower().replace(" ", "_"): (v or "").strip() for k, v in rec.items()}
        login = rec.get("login") or rec.get("sis_login_id") or rec.get("id") or rec.get("file", "")
        if not login:
            continue
        student = Student(login, **{k: rec.get(k, "") for k in ROSTER_KEYS})
        for key in (rec.get("file"), rec.get("login"), rec.get("sis_login_id")):
            if key:
                out[key] = student
    return out


def student_of(notebook: str, roster: dict[str, Student] | None = None) -> Student:
    """Who an upload belongs to: by the roster, else by its name (rules in the module docstring)."""
    path = PurePath(notebook)
    canvas = _CANVAS.match(path.name)
    if canvas:
        login, canvas_id = canvas["login"], canvas["id"]
    else:
        before = _BEFORE_EX.match(path.name)
        login, canvas_id = (before["login"] if before else path.parent.name or path.stem), ""
    if roster:
        for key in (path.name, login):
            if key in roster:
                return roster[key]
    return Student(login, name=login, id=canvas_id, sis_login_id=login)


def _best(rows: list[Row], roster: dict[str, Student] | None) -> dict[tuple[Student, str], list[Row]]:
    """Each student's rows per exercise, from their best-scoring notebook of that exercise."""
    best: dict[tuple[Student, str], list[Row]] = {}
    for nb, nb_rows in _by_notebook(rows).items():
        key = (student_of(nb, roster), nb_rows[0].exercise)
        if key not in best or sum(r.points for r in nb_rows) > sum(r.points for r in best[key]):
            best[key] = nb_rows
    return best


def _csv(header: list[str], records: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([csv_cell(h) for h in header])
    w.writerows([[csv_cell(v) for v in rec] for rec in records])
    return buf.getvalue()


def canvas_csv(rows: list[Row], exercises: dict[str, Any], roster: dict[str, Student] | None = None) -> str:
    """A Canvas gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one column
    per exercise ("<id> (<max> pts)"), a Points Possible row, one row per student (every roster
    student; a cell is empty where nothing of theirs was graded)."""
    best = _best(rows, roster)
    ex_ids = [e for e in exercises if any(k[1] == e for k in best)]
    students = list(dict.fromkeys([*(roster or {}).values(), *(k[0] for k in best)]))
    header = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    header += [f"{e} ({exercises[e].max_points} pts)" for e in ex_ids]
    records: list[list[Any]] = [["Points Possible", "", "", "", ""] + [exercises[e].max_points for e in ex_ids]]
    for s in sorted(students, key=lambda s: (s.name or s.login).lower()):
        cells = [f"{sum(r.points for r in best[(s, e)]):g}" if (s, e) in best else "" for e in ex_ids]
        records.append([s.name or s.login, s.id, s.sis_user_id, s.sis_login_id or s.login, s.section, *cells])
    return _csv(header, records)


_SEVERITY = ("invalid", "unknown", "timeout", "error", "missing", "not_implemented", "failed")


def notebook_status(rows: list[Row]) -> str:
    """One word for a notebook: passed, or the gravest status among its tasks."""
    statuses = {r.status for r in rows}
    return next((s for s in _SEVERITY if s in statuses), "passed" if statuses <= {"passed"} else "failed")


def grade_sheets(rows: list[Row], exercises: dict[str, Any],
                 roster: dict[str, Student] | None = None) -> dict[str, str]:
    """Otter-style sheets, by exercise id: one row per student (student, file, status, a column per
    task, total, max). A notebook that timed out or did not run keeps its row (0s, its status);
    a roster student with nothing graded gets a row with status "no submission"."""
    best = _best(rows, roster)
    sheets: dict[str, str] = {}
    for ex_id in sorted({k[1] for k in best}):
        tasks = [t.name for t in exercises[ex_id].tasks] if ex_id in exercises else ["-"]
        max_points = exercises[ex_id].max_points if ex_id in exercises else 0
        header = ["student", "file", "status", *tasks, "total", "max_points"]
        records = []
        graded = {s: nb_rows for (s, e), nb_rows in best.items() if e == ex_id}
        for s, nb_rows in sorted(graded.items(), key=lambda kv: kv[0].login):
            points = {r.task: r.points for r in nb_rows}
            records.append([s.login, PurePath(nb_rows[0].notebook).name, notebook_status(nb_rows),
                            *[f"{points.get(t, 0.0):g}" for t in tasks], f"{sum(points.values()):g}", max_points])
        for s in sorted(set((roster or {}).values()) - set(graded), key=lambda s: s.login):
            records.append([s.login, "", "no submission", *["0"] * len(tasks), "0", max_points])
        sheets[ex_id] = _csv(header, records)
    return sheets


def feedback_files(rows: list[Row], roster: dict[str, Student] | None = None) -> dict[str, str]:
    """Markdown feedback by file name (``<login>.md``), one per student, without expected values."""
    by_student: dict[Student, list[Row]] = {}
    for (s, _), nb_rows in sorted(_best(rows, roster).items(), key=lambda kv: kv[0][1]):
        by_student.setdefault(s, []).extend(nb_rows)
    out: dict[str, str] = {}
    for s, student_rows in by_student.items():
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", s.login).lstrip(".") or "student"
        name, n = f"{safe}.md", 1
        while name in out:  # two logins that clean to the same name
            n += 1
            name = f"{safe}-{n}.md"
        out[name] = feedback_markdown(student_rows, s.name or s.login)
    return out

"""The grader, both ways: solutions get full marks, untouched learner notebooks get 0, each
deliberately broken submission in tests/submissions/ is graded as the platform promises, and
each hostile one in tests/submissions/hostile/ scores 0 without harming anyone else.

One `attn-course grade` run (a subprocess, as an instructor would run it) grades them all;
the tests below read its report. The hostile submissions only run inside the sandbox
(bubblewrap): where it does not work, they are left out and their tests skip, saying how to
install it. Never run them with `--sandbox none`: they kill processes and overwrite files.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from attn_course.grading.build import learner_path, solution_notebook_paths
from attn_course.grading.catalog import load_exercises
from attn_course.grading.compare import GRADING_SEED, case_generator
from attn_course.grading.sandbox import detect

ROOT = Path(__file__).resolve().parents[2]
SUBMISSIONS = ROOT / "tests" / "submissions"
HOSTILE = sorted((SUBMISSIONS / "hostile").glob("*.ipynb"))
# An upload that broke: not JSON. Written at test time, since a committed notebook must be valid.
BROKEN_UPLOAD = '{"cells": [ this is not JSON, the upload broke\n'
# What the hostile notebooks look for and must never get.
TOKEN = "tok-" + "5e" * 8
EARLIER = "EARLIER-REPORT-" + "7f" * 4
MARKER = "ATTN_HOSTILE_MARKER"
TMP_MARKER = Path("/tmp/attn-course-hostile-was-here")


def write_broken_upload(folder: Path, name: str = "ex01_not_a_notebook.ipynb") -> Path:
    path = folder / name
    path.write_text(BROKEN_UPLOAD)
    return path


pytestmark = pytest.mark.slow
# Graded in bubblewrap where it works, else (honest and broken notebooks only) without a sandbox.
SANDBOX = "bwrap" if detect("bwrap") is not None else "none"
NEEDS_SANDBOX = pytest.mark.skipif(
    SANDBOX != "bwrap", reason="bubblewrap does not work here: install it (Debian/Ubuntu: `apt-get install "
                               "bubblewrap`; `make test` does so as root) to run the hostile submissions")


def seed_table_notebook(path: Path) -> None:
    """A submission with no code of its own: a table of the expected outputs for the inputs drawn
    from the public grading seed, as anyone with a copy of the package can compute offline."""
    ex = load_exercises()["ex01_softmax_attention"]
    table = {}
    for task in ex.tasks:
        cases = task.cases(case_generator(GRADING_SEED))
        table[task.name] = {_key(c.args): task.reference(*c.args) for c in cases}
    buf = io.BytesIO()
    torch.save(table, buf)
    blob = base64.b64encode(buf.getvalue()).decode()
    cells = [f"""import base64, hashlib, io
import torch
TABLE = torch.load(io.BytesIO(base64.b64decode("{blob}")), weights_only=True)


def key(args):
    h = hashlib.sha256()
    for a in args:
        h.update(str(tuple(a.shape)).encode() + a.numpy().tobytes())
    return h.hexdigest()
"""] + [f"def {t.name}(*args):\n    return TABLE[{t.name!r}][key(args)]\n" for t in ex.tasks]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"attn_course": {"exercise": ex.id}})
    nbformat.write(nb, path)


def _key(args) -> str:
    h = hashlib.sha256()
    for a in args:
        h.update(str(tuple(a.shape)).encode() + a.numpy().tobytes())
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marked_processes() -> list[str]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if MARKER.encode() in cmd and str(os.getpid()) != p:
                found.append(p)
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("grade")
    uploads = tmp_path_factory.mktemp("uploads")
    home = tmp_path_factory.mktemp("home")
    json_path, csv_path = out / "report.json", out / "report.csv"
    (out / "last-term.csv").write_text(f"notebook,points\nalice.ipynb,{EARLIER}\n")
    sources = [str(p) for p in solution_notebook_paths(ROOT)]
    learners = [str(learner_path(Path(p))) for p in sources]
    broken = write_broken_upload(tmp_path_factory.mktemp("upload"))
    # Honest classmates graded in the same run (one identical to a solution: a duplicate).
    honest = uploads / "zz_honest_ex01.ipynb"
    shutil.copy(sources[0], honest)
    seed_table_notebook(uploads / "ex01_seed_table.ipynb")
    os.symlink(honest, uploads / "ex01_link_to_classmate.ipynb")
    os.symlink(sources[0], uploads / "ex01_link_to_solution.ipynb")
    os.mkfifo(uploads / "ex01_fifo.ipynb")
    hostile = []
    if SANDBOX == "bwrap":
        for h in HOSTILE:
            shutil.copy(h, uploads / h.name)
            hostile.append(h.name)
    # Hostile names, given relative to the grader's folder after `--`.
    odd = ["=HYPERLINK(1)ex01.ipynb", "--csv=pwned.ipynb", "ex01_\x1b[31mred\x1b[0m\rname.ipynb"]
    for name in odd:
        write_broken_upload(out, name)
    before = {p.name: _sha(p) for p in uploads.iterdir() if p.is_file() and not p.is_symlink()
              and p.name != "ex01_fifo.ipynb"}
    TMP_MARKER.unlink(missing_ok=True)
    env = {**os.environ, "HOME": str(home), "ATTN_TEST_TOKEN": TOKEN, "GITHUB_TOKEN": TOKEN,
           "SSH_AUTH_SOCK": "/tmp/agent." + TOKEN, "TMUX": "/tmp/tmux-" + TOKEN}
    cmd = [sys.executable, "-m", "attn_course.cli", "grade", "--json", str(json_path), "--csv", str(csv_path),
           "--jobs", "3", "--timeout", "20", "--call-timeout", "8", "--sandbox", SANDBOX,
           "--", *sources, *learners, *map(str, sorted(SUBMISSIONS.glob("*.ipynb"))), str(broken), str(uploads),
           *odd]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out, env=env)
    done = time.monotonic()
    shas = {p: _sha(p) for p in (json_path, csv_path, out / "report.jsonl") if p.exists()}
    return {"proc": proc, "json": json_path, "csv": csv_path, "done": done, "sources": sources,
            "learners": learners, "uploads": uploads, "before": before, "home": home, "out": out,
            "hostile": hostile, "shas": shas, "seconds": done - start, "odd": odd}


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
    "ex01_uses_library": {"softmax": ("missing", "must be defined in the notebook")} if SANDBOX == "none"
    else {"softmax": ("missing", "no function or class named `softmax`"),
          "attend": ("error", "NameError: name 'softmax' is not defined")},
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
    if name == "ex01_cheat_wraps_reference" and SANDBOX == "none":
        assert "calls `attn_course.masking.masked_softmax`" in rows["softmax"]["message"]
    # In the sandbox its `import attn_course.masking` fails, so its softmax stays the stub.


def test_report_is_not_overwritten_after_grading(report):
    """ex01_cheat_writes_report leaves a process behind that rewrites the report 4 s later (and
    ex01_hostile_daemon one that keeps forking): the report stays what the grader wrote."""
    time.sleep(max(0.0, report["done"] + 6 - time.monotonic()))
    data = json.loads(report["json"].read_text())
    assert "totals" in data and len(data["rows"]) > 10
    assert report["csv"].read_text().startswith("notebook,exercise,task")
    assert len(report["shas"]) == 3  # JSON, CSV and the progress log
    for path, sha in report["shas"].items():
        assert _sha(path) == sha, f"{path.name} changed after the grader exited"


def test_report_says_which_sandbox(report):
    sandbox = json.loads(report["json"].read_text())["sandbox"]
    assert sandbox["kind"] == SANDBOX
    if SANDBOX == "none":
        assert "UNSANDBOXED" in sandbox["summary"]
    else:
        # What this machine really applied: every namespace the probe found working is listed.
        assert "mount namespace" in sandbox["applied"][0]
        assert any("pid namespace" in a for a in sandbox["applied"]) or "pid namespace" in sandbox["missing"]


def test_progress_log_has_every_notebook(report):
    lines = (report["out"] / "report.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["type"] == "run" and records[0]["sandbox"]["kind"] == SANDBOX
    # The report cleans control characters out of every cell; the log keeps names as they are.
    from attn_course.grading.report import clean_text

    logged = {clean_text(r["notebook"]) for r in records[1:]}
    assert logged == {r["notebook"] for r in json.loads(report["json"].read_text())["rows"]} - {
        r["notebook"] for r in json.loads(report["json"].read_text())["rows"] if r["exercise"] == "?"
        and "regular file" in r["message"]}


def test_seed_table_scores_zero(report):
    """Full marks with the public seed (see test_seed_table_would_pass_on_the_public_seed); 0 now."""
    rows = rows_for(report, "ex01_seed_table.ipynb")
    assert all(r["points"] == 0 for r in rows.values()), rows
    assert "KeyError" in rows["softmax"]["message"]


def test_seed_table_would_pass_on_the_public_seed(tmp_path):
    """The attack is real: on inputs from the public seed, the table notebook answers right."""
    from attn_course.grading.compare import evaluate
    from attn_course.grading.harness import call_local

    path = tmp_path / "t.ipynb"
    seed_table_notebook(path)
    ns: dict = {"__name__": "__main__"}
    for cell in nbformat.read(path, as_version=4).cells:
        exec(cell.source, ns)
    ex = load_exercises()["ex01_softmax_attention"]
    for task in ex.tasks:
        call = lambda cases, t=task: [call_local(ns[t.name], c) for c in cases]
        assert evaluate(task, call, seed=GRADING_SEED).passed
        assert not evaluate(task, call, seed=GRADING_SEED + 1).passed


def test_honest_classmates_keep_full_marks_and_duplicates_are_flagged(report):
    rows = rows_for(report, "zz_honest_ex01.ipynb")
    assert all(r["points"] == r["max_points"] for r in rows.values()), rows
    assert all("identical to" in r["message"] and report["sources"][0] in r["message"] for r in rows.values())


def test_links_and_fifos_are_reported_not_followed(report):
    for name, kind in (("ex01_link_to_classmate.ipynb", "symbolic link"), ("ex01_link_to_solution.ipynb",
                                                                          "symbolic link"),
                       ("ex01_fifo.ipynb", "FIFO")):
        rows = rows_for(report, name)
        assert len(rows) == 1 and rows["-"]["points"] == 0 and rows["-"]["status"] == "invalid", rows
        assert kind in rows["-"]["message"] and "regular file" in rows["-"]["message"]


def test_hostile_file_names(report):
    out = report["out"]
    stdout = report["proc"].stdout
    assert "\x1b" not in stdout and "\r" not in stdout and "red?[0m?name" in stdout
    # `--csv=pwned.ipynb` after `--` is a path: graded (as the broken upload it is), not an option.
    assert rows_for(report, "--csv=pwned.ipynb")
    assert (out / "--csv=pwned.ipynb").read_text().startswith('{"cells": [ this')
    csv_text = report["csv"].read_text()
    assert "\n'=HYPERLINK(1)ex01.ipynb," in csv_text and "\n=HYPERLINK" not in csv_text
    assert "\n'--csv=pwned.ipynb," in csv_text


@NEEDS_SANDBOX
@pytest.mark.parametrize("name", [h.stem for h in HOSTILE])
def test_hostile_submission_scores_zero(report, name):
    rows = rows_for(report, f"{name}.ipynb")
    assert set(rows) == {t.name for t in load_exercises()["ex01_softmax_attention"].tasks}
    assert all(r["points"] == 0 for r in rows.values()), rows


@NEEDS_SANDBOX
def test_references_and_solutions_are_out_of_reach(report):
    for name in ("ex01_hostile_profile_off", "ex01_hostile_thread_and_clone"):
        for r in rows_for(report, f"{name}.ipynb").values():
            assert "No module named 'attn_course." in r["message"], r
    for r in rows_for(report, "ex01_hostile_replaces_harness.ipynb").values():
        assert "No module named 'attn_course.exercises'" in r["message"], r
    for r in rows_for(report, "ex01_hostile_solution_notebook.ipynb").values():
        assert r["status"] == "not_implemented", r  # it found no solution to run


@NEEDS_SANDBOX
def test_results_channel_cannot_block_or_bloat(report):
    rows = rows_for(report, "ex01_hostile_blocks_results.ipynb")
    assert "not a regular file" in rows["softmax"]["message"]
    assert "a link?" in rows["dot_scores"]["message"]
    assert "larger than 64 MiB" in rows["scaled_dot_scores"]["message"]
    assert "nested deeper" in rows["context_vector"]["message"]
    assert "more than 100000 values" in rows["attend"]["message"]


@NEEDS_SANDBOX
def test_no_secret_reaches_the_feedback(report):
    text = report["json"].read_text() + report["csv"].read_text()
    assert TOKEN not in text and EARLIER not in text
    message = rows_for(report, "ex01_hostile_leaks_secrets.ipynb")["softmax"]["message"]
    assert "zz_honest" not in message and "report" not in message, message


@NEEDS_SANDBOX
def test_nothing_persists_or_leaks_onto_the_machine(report):
    assert not TMP_MARKER.exists()
    assert not (report["home"] / ".ipython").exists()
    for d in {Path(sys.prefix), Path(torch.__file__).parent.parent}:
        assert not (d / "sitecustomize.py").exists() or "attn-hostile" not in (d / "sitecustomize.py").read_text()


@NEEDS_SANDBOX
def test_classmates_files_are_untouched(report):
    after = {name: _sha(report["uploads"] / name) for name in report["before"]}
    assert after == report["before"]
    for src in report["sources"]:
        nbformat.read(src, as_version=4)  # still a notebook


@NEEDS_SANDBOX
def test_nothing_is_left_running(report):
    time.sleep(max(0.0, report["done"] + 1 - time.monotonic()))
    assert _marked_processes() == []


@NEEDS_SANDBOX
def test_wall_clock_kills_the_whole_sandbox(tmp_path):
    """A notebook that ignores interrupts, never ends and leaves a daemon that keeps forking:
    its sandbox is killed at the wall clock, with everything in it, and the report is written."""
    nb = SUBMISSIONS / "wall_clock" / "ex01_hostile_never_ends.ipynb"
    start = time.monotonic()
    proc = _run_cli("grade", "--sandbox", "bwrap", "--wall-clock", "15", "--timeout", "60", "--quiet",
                    "--json", str(tmp_path / "r.json"), "--", str(nb), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - start < 60
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 5 and all(r["points"] == 0 for r in rows)
    assert all(r["status"] == "timeout" and "wall clock" in r["message"] for r in rows), rows
    time.sleep(1)
    assert _marked_processes() == []


def test_report_targets_must_be_regular_files(tmp_path):
    nb = write_broken_upload(tmp_path)
    (tmp_path / "r.json").mkdir()
    proc = _run_cli("grade", "--sandbox", SANDBOX, "--json", str(tmp_path / "r.json"), str(nb), cwd=tmp_path)
    assert proc.returncode == 2 and "folder" in proc.stderr
    os.symlink(tmp_path / "elsewhere.csv", tmp_path / "r.csv")
    proc = _run_cli("grade", "--sandbox", SANDBOX, "--csv", str(tmp_path / "r.csv"), str(nb), cwd=tmp_path)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert not (tmp_path / "elsewhere.csv").exists()


def test_shards_merge_into_the_whole(tmp_path):
    from attn_course.cli import build_parser
    from attn_course.grading.report import collect_notebooks, shard, to_json
    from attn_course.grading.runner import Row

    assert build_parser().parse_args(["grade", "--shard", "2/3", "x"]).shard == (2, 3)
    for i in range(5):
        write_broken_upload(tmp_path, f"ex01_student{i}.ipynb")
    uploads, _ = collect_notebooks([str(tmp_path)])
    for k in (1, 2):
        rows = [Row(str(u.path), "ex01", "softmax", 1.0, 2, "failed", "-") for u in shard(uploads, k, 2)]
        (tmp_path / f"s{k}.json").write_text(to_json(rows, {"kind": "bwrap", "summary": "test"}))
    proc = _run_cli("merge-reports", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"),
                    "--json", str(tmp_path / "all.json"), "--csv", str(tmp_path / "all.csv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "all.json").read_text())
    assert len(merged["totals"]) == 5 and len(merged["rows"]) == 5 and len(merged["sandbox"]) == 2
    assert (tmp_path / "all.csv").read_text().count("\n") == 6


def test_resume_reuses_the_progress_log(tmp_path):
    nb = write_broken_upload(tmp_path)
    args = ("grade", "--sandbox", SANDBOX, "--quiet", "--csv", str(tmp_path / "r.csv"), str(nb))
    assert _run_cli(*args, cwd=tmp_path).returncode == 0
    log = tmp_path / "r.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["type"] for r in records] == ["run", "notebook"]
    # A torn line (a grader killed mid-write) is ignored; an unchanged notebook is not graded again.
    with open(log, "a") as f:
        f.write('{"type": "notebook", "noteb')
    assert _run_cli(*args, "--resume", cwd=tmp_path).returncode == 0
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    assert [r["type"] for r in records] == ["run", "notebook", "run"]
    assert (tmp_path / "r.csv").read_text().count("not a valid notebook") == 5


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

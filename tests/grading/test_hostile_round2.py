"""Round 2 of hostile submissions (tests/submissions/hostile/round2/): attacks a second security
review found to succeed when the grader runs as root with ``--jobs 2``, each graded beside
honest classmates (copies of the solution) in ONE `attn-course grade` run.

What each attack tries, and what must hold (one test each):

1. escape: opens /proc/sys/kernel/core_pattern for writing (never writes), checks who owns
   its files on the host, tries to read the solution and a classmate -> 0 points, no sysctl
   open for writing, its files not owned by host root;
2. persistence: a setuid copy of /bin/true and a 3000-deep folder tree in its work folder ->
   the grader exits 0 with complete reports, nothing of the run is left on disk;
3. grader memory: 1.6 GB multipart messages on stdin (never read) and iopub -> the grader's
   peak RSS stays bounded;
4. grader freeze: a 450,000-newline cell and a missing `softmax` -> graded well under its
   wall clock; the classmate alongside keeps full marks;
5. starving classmates: 200 busy processes -> the classmate alongside keeps full marks in
   about its usual time (measured alone in the same fixture);
6. disk: 50 MB files until an OSError (at most 3 GB) -> the disk limit holds, free space
   comes back;
7. host memory: 4 x 400 MB touched plus 300 MB in /dev/shm -> the memory limit holds;
8. softmax without writing it (functools.partial, a thread, the ATen op, log_softmax().exp())
   -> 0 on the softmax task;
9. a forged report (terminal escapes, bidi overrides, newlines in error texts) -> no control
   or bidi character in the CSV or JSON;
10. named ex01, metadata says ex02 -> graded as ex01 (the file name), the disagreement flagged.

The limits are those of ``LIMIT_FLAGS`` (per kernel: 1 GiB of memory, 1 CPU, 256 MiB of disk);
flags the grader does not know yet are left out, so that the module runs before and after they
exist. The grader gets its own temporary folder (TMPDIR), so that what it leaves behind can be
told apart from other runs on the machine. The run is bounded (``RUN_TIMEOUT``): a grader that
freezes is killed, and the tests then read its progress log.

Only inside bubblewrap: these notebooks fork hundreds of processes, fill disks and memory.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from attn_course.grading.catalog import load_exercises
from attn_course.grading.sandbox import detect

ROOT = Path(__file__).resolve().parents[2]
ROUND2 = ROOT / "tests" / "submissions" / "hostile" / "round2"
EX01 = "ex01_softmax_attention"
HONEST = [f"ex01_honest_classmate_{x}" for x in "abcd"]
CHEATS = ["ex01_hostile_softmax_partial", "ex01_hostile_softmax_thread", "ex01_hostile_softmax_aten",
          "ex01_hostile_softmax_log_softmax"]
# The order the grader gets them in (two at a time): each attack on others starts beside an
# honest classmate; the freeze goes last, so that a frozen grader has graded the rest.
ORDER = ["ex01_hostile_starves_classmates", "ex01_honest_classmate_a",
         "ex01_hostile_host_memory", "ex01_honest_classmate_b",
         "ex01_hostile_disk", "ex01_hostile_grader_memory", "ex01_honest_classmate_c",
         "ex01_hostile_escape", "ex01_hostile_persistence", "ex01_hostile_report", "ex01_hostile_metadata_says_ex02",
         *CHEATS,
         "ex01_hostile_freeze", "ex01_honest_classmate_d"]
LIMIT_FLAGS = {"--memory": "1G", "--cpus": "1", "--disk": "256M"}
COMMON = ["--jobs", "2", "--sandbox", "auto", "--timeout", "30", "--call-timeout", "10"]
RUN_TIMEOUT = 200  # seconds for the whole graded folder; the module stays under ~4 minutes
PEAK_RSS_LIMIT = 2500 << 20  # the grader process itself
DISK_LIMIT_MB = 256
MEMORY_LIMIT_MB = 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(detect("bwrap") is None,
                       reason="bubblewrap does not work here: install it (Debian/Ubuntu: `apt-get install bubblewrap`)"
                              " to run the round-2 hostile submissions; they never run unsandboxed"),
]


def test_every_notebook_of_the_folder_is_graded():
    on_disk = {p.stem for p in ROUND2.glob("*.ipynb")}
    assert on_disk == set(ORDER), on_disk ^ set(ORDER)


def _supported_limit_flags() -> list[str]:
    text = subprocess.run([sys.executable, "-m", "attn_course.cli", "grade", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    flags = []
    for flag, value in LIMIT_FLAGS.items():
        if re.search(rf"(^|\s|,){re.escape(flag)}\b", text):
            flags += [flag, value]
    return flags


class _Sampler(threading.Thread):
    """Peak RSS of the grader process (and of its whole tree), least free space of the grader's
    temporary folder's filesystem, least available memory, and the run folders seen."""

    def __init__(self, pid: int, tmpdir: Path):
        super().__init__(daemon=True)
        self.pid, self.tmpdir = pid, tmpdir
        self.peak_rss = self.peak_tree_rss = 0
        self.min_free = self.min_available = 1 << 62
        self.run_dirs: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            try:
                rss = proc.memory_info().rss
                self.peak_rss = max(self.peak_rss, rss)
                tree = rss
                for child in proc.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_tree_rss = max(self.peak_tree_rss, tree)
            except psutil.Error:
                pass
            st = os.statvfs(self.tmpdir)
            self.min_free = min(self.min_free, st.f_bavail * st.f_frsize)
            self.min_available = min(self.min_available, psutil.virtual_memory().available)
            try:
                self.run_dirs |= {d for d in os.listdir(self.tmpdir) if d.startswith("attn-course-run-")}
            except OSError:
                pass
            self.stop.wait(0.05)


def _grade(paths: list[Path], out: Path, tmpdir: Path, timeout: float) -> dict:
    json_path, csv_path = out / "report.json", out / "report.csv"
    cmd = [sys.executable, "-m", "attn_course.cli", "grade", *COMMON, *_supported_limit_flags(), "--quiet",
           "--json", str(json_path), "--csv", str(csv_path), "--", *map(str, paths)]
    # PYTHONPATH: the grader runs in another folder, where an installed (editable) attn_course of
    # another checkout would be imported instead of this one.
    env = {**os.environ, "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.monotonic()
    with open(out / "stdout", "w") as so, open(out / "stderr", "w") as se:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=so, stderr=se, start_new_session=True)
        sampler = _Sampler(proc.pid, tmpdir)
        sampler.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    seconds = time.monotonic() - start
    sampler.stop.set()
    sampler.join()
    log = out / "report.jsonl"
    records = []
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    notebooks = {Path(r["notebook"]).stem: r for r in records if r.get("type") == "notebook"}
    return {"rc": rc, "timed_out": timed_out, "seconds": seconds, "json": json_path, "csv": csv_path,
            "stderr": (out / "stderr").read_text(errors="replace"), "log": notebooks, "sampler": sampler}


def _pids_with_cwd_under(folder: Path) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                cwd = os.readlink(f"/proc/{p}/cwd")
            except OSError:
                continue
            if cwd == str(folder) or cwd.startswith(str(folder) + "/"):
                found.append(int(p))
    return found


def _leftover_cgroups(names: set[str]) -> list[str]:
    found = []
    for base in Path("/sys/fs/cgroup").glob("*"):
        for name in names:
            if (base / name).is_dir():
                found.append(str(base / name))
    return found


@pytest.fixture(scope="module")
def r2(tmp_path_factory):
    work = tmp_path_factory.mktemp("round2")
    # The classmate alone first: its usual time under the same limits.
    alone_out, alone_tmp = work / "alone", work / "alone-tmp"
    alone_out.mkdir()
    alone_tmp.mkdir()
    alone = _grade([ROUND2 / "ex01_honest_classmate_a.ipynb"], alone_out, alone_tmp, 120)
    tmpdir, out = work / "tmp", work / "out"
    tmpdir.mkdir()
    out.mkdir()
    st = os.statvfs(tmpdir)
    free_before = st.f_bavail * st.f_frsize
    run = _grade([ROUND2 / f"{name}.ipynb" for name in ORDER], out, tmpdir, RUN_TIMEOUT)
    time.sleep(1)
    # What the run left behind: recorded first, then cleaned up (this machine must not keep it).
    run["pids_left"] = _pids_with_cwd_under(tmpdir)
    setuid = subprocess.run(["find", str(tmpdir), "-perm", "-4000", "-user", "root", "-type", "f"],
                            capture_output=True, text=True).stdout.split()
    run["setuid_left"] = setuid
    run["dirs_left"] = sorted(d.name for d in tmpdir.iterdir())
    run["mounts_left"] = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                          if str(work) in line]
    names = run["sampler"].run_dirs | set(alone["sampler"].run_dirs)
    run["cgroups_left"] = _leftover_cgroups(names)
    for pid in run["pids_left"]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for cg in run["cgroups_left"]:
        for pid in Path(cg, "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmpdir), str(alone_tmp)], capture_output=True)
    for cg in run["cgroups_left"]:
        subprocess.run(["find", cg, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"], capture_output=True)
    st = os.statvfs(work)
    run["free_before"], run["free_after"] = free_before, st.f_bavail * st.f_frsize
    run["alone"] = alone
    return run


def _rows(r2) -> list[dict]:
    """The report's rows; the progress log's when the grader wrote no report (it crashed or froze)."""
    if r2["json"].exists():
        return json.loads(r2["json"].read_text())["rows"]
    return [row for rec in r2["log"].values() for row in rec["rows"]]


def _csv_text(r2) -> str:
    """The CSV exactly as written (line ends included); '' when there is none."""
    if not r2["csv"].exists():
        return ""
    with open(r2["csv"], encoding="utf-8", newline="") as f:
        return f.read()


def rows_for(r2, name: str) -> dict[str, dict]:
    rows = {r["task"]: r for r in _rows(r2) if Path(r["notebook"]).stem == name}
    assert rows, (f"no rows for {name}: the grader " + ("was killed after its run's time limit (frozen?)"
                                                         if r2["timed_out"] else f"exited {r2['rc']}")
                  + "\n" + r2["stderr"][-2000:])
    return rows


def _probe(rows: dict[str, dict]) -> str:
    """What an attack reports about itself through its softmax's error ('' when it could not say)."""
    m = re.search(r"probe: ([^(]*)", rows.get("softmax", {}).get("message", ""))
    return m.group(1) if m else ""


def _assert_zero(r2, name: str) -> dict[str, dict]:
    rows = rows_for(r2, name)
    assert set(rows) == {t.name for t in load_exercises()[EX01].tasks}, rows
    assert all(r["points"] == 0 for r in rows.values()), rows
    return rows


def _assert_full_marks(r2, name: str) -> None:
    rows = rows_for(r2, name)
    assert set(rows) == {t.name for t in load_exercises()[EX01].tasks}, rows
    assert all(r["points"] == r["max_points"] for r in rows.values()), rows


# -- the run as a whole ---------------------------------------------------------------------------

def test_grader_exits_zero_with_complete_reports(r2):
    assert not r2["timed_out"], f"the grader did not finish in {RUN_TIMEOUT} s (frozen?)"
    assert r2["rc"] == 0, r2["stderr"][-3000:]
    data = json.loads(r2["json"].read_text())
    assert {Path(r["notebook"]).stem for r in data["rows"]} == set(ORDER)
    rows = list(csv.DictReader(io.StringIO(_csv_text(r2), newline="")))
    assert len(rows) == len(data["rows"])


def test_honest_classmates_keep_full_marks(r2):
    for name in HONEST:
        _assert_full_marks(r2, name)


def test_nothing_is_left_running_or_on_disk(r2):
    assert r2["pids_left"] == [], "processes of the sandboxes still alive (their cwd is under the run folder)"
    assert r2["dirs_left"] == [], f"left in the grader's temporary folder: {r2['dirs_left']}"
    assert r2["mounts_left"] == [], r2["mounts_left"]
    assert r2["cgroups_left"] == [], r2["cgroups_left"]


# -- one test per attack --------------------------------------------------------------------------

def test_escape_gets_nothing_and_no_sysctl_opens_for_writing(r2):
    rows = _assert_zero(r2, "ex01_hostile_escape")
    probe = _probe(rows)
    # A sandbox so tight the probe cannot even run is fine; a probe that ran must find no way out.
    if probe:
        assert "core_pattern_writable=False" in probe, probe


def test_escape_files_are_not_owned_by_host_root(r2):
    """From inside, /proc/self/uid_map shows the parent user namespace's id: with
    --disable-userns bwrap nests two namespaces, so it reads 0 there even though the host uid is
    the kernel's own. The host side is checked in tests/grading/test_sandbox.py (a file written inside
    is owned by the kernel's uid); here the report must say that identity is in force."""
    probe = _probe(rows_for(r2, "ex01_hostile_escape"))
    assert "core_pattern_writable=True" not in probe, probe
    if os.geteuid() == 0:
        sandbox = json.loads(r2["json"].read_text())["sandbox"]
        assert any("own unprivileged host uid" in a for a in sandbox["applied"]), sandbox


def test_persistence_leaves_no_setuid_file_and_nothing_on_disk(r2):
    _assert_zero(r2, "ex01_hostile_persistence")
    assert r2["setuid_left"] == [], f"setuid files owned by root left: {r2['setuid_left'][:3]}"
    assert r2["dirs_left"] == [], f"left in the grader's temporary folder: {r2['dirs_left']}"
    assert not r2["timed_out"] and r2["rc"] == 0, r2["stderr"][-3000:]
    assert r2["json"].exists() and r2["csv"].exists()


def test_grader_memory_stays_bounded(r2):
    _assert_zero(r2, "ex01_hostile_grader_memory")
    peak = r2["sampler"].peak_rss
    assert peak < PEAK_RSS_LIMIT, f"the grader's peak RSS was {peak >> 20} MiB"
    _assert_full_marks(r2, "ex01_honest_classmate_c")


def test_freeze_does_not_stop_the_grader(r2):
    rows = _assert_zero(r2, "ex01_hostile_freeze")
    assert "softmax" in rows and rows["softmax"]["status"] == "missing", rows["softmax"]
    seconds = r2["log"]["ex01_hostile_freeze"]["seconds"]
    assert seconds < 60, f"the freeze notebook took {seconds} s (its wall clock is 210 s)"
    _assert_full_marks(r2, "ex01_honest_classmate_d")


def test_starving_classmates_do_not_slow_the_honest_one(r2):
    _assert_zero(r2, "ex01_hostile_starves_classmates")
    _assert_full_marks(r2, "ex01_honest_classmate_a")
    alone = r2["alone"]["log"]["ex01_honest_classmate_a"]["seconds"]
    beside = r2["log"]["ex01_honest_classmate_a"]["seconds"]
    # ~3 s alone here; beside 200 spinners without a CPU limit it took 13-21 s (2x + 10 s let that pass).
    assert beside <= 2 * alone + 4, f"{beside} s beside the attack, {alone} s alone"


def test_disk_limit_holds_and_space_comes_back(r2):
    rows = _assert_zero(r2, "ex01_hostile_disk")
    m = re.search(r"disk_mb cwd=(\d+) tmp=(\d+)", _probe(rows))
    if m:
        written = int(m.group(1)) + int(m.group(2))
        assert written <= DISK_LIMIT_MB + 50, f"it wrote {written} MB (work folder + /tmp)"
    lost = (r2["free_before"] - r2["sampler"].min_free) >> 20
    assert lost <= 2 * DISK_LIMIT_MB + 100, f"the grader's filesystem lost {lost} MiB during the run"
    assert abs(r2["free_after"] - r2["free_before"]) <= 100 << 20, (r2["free_before"] >> 20, r2["free_after"] >> 20)
    for later in ("ex01_honest_classmate_c", "ex01_honest_classmate_d"):
        _assert_full_marks(r2, later)


def test_host_memory_limit_holds(r2):
    rows = _assert_zero(r2, "ex01_hostile_host_memory")
    m = re.search(r"memory_mb touched=(\d+) shm=(\d+)", _probe(rows))
    if m:
        used = int(m.group(1)) + int(m.group(2))
        assert used <= MEMORY_LIMIT_MB, f"one kernel held {used} MB (children + /dev/shm)"
    _assert_full_marks(r2, "ex01_honest_classmate_b")
    assert r2["sampler"].min_available > 2 << 30, r2["sampler"].min_available >> 20


@pytest.mark.parametrize("name", CHEATS)
def test_softmax_without_writing_it_scores_zero(r2, name):
    rows = rows_for(r2, name)
    assert rows["softmax"]["points"] == 0, rows["softmax"]


_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _bad_chars(text: str) -> list[str]:
    return sorted({repr(ch) for ch in text if unicodedata.category(ch) in ("Cc", "Cf") or ch in _BIDI})


def test_report_has_no_control_or_bidi_characters(r2):
    rows_for(r2, "ex01_hostile_report")  # graded
    text = _csv_text(r2)
    assert text, "no CSV report"
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    for row in parsed:
        for cell in row:
            assert not _bad_chars(cell), (_bad_chars(cell), cell[:200])
    # `cat report.csv`: one line per row, and no control character but the line ends.
    assert not _bad_chars(text.replace("\r\n", "")), _bad_chars(text.replace("\r\n", ""))
    assert len(text.split("\r\n")) == len(parsed) + 1
    data = json.loads(r2["json"].read_text())
    for row in data["rows"]:
        for value in row.values():
            if isinstance(value, str):
                assert not _bad_chars(value), (_bad_chars(value), value[:200])
    raw = r2["json"].read_text(encoding="utf-8")
    assert not _bad_chars(raw.replace("\n", "")) and "\\u001b" not in raw and "\\u202e" not in raw.lower()


def test_exercise_is_the_file_names_and_disagreement_is_flagged(r2):
    rows = rows_for(r2, "ex01_hostile_metadata_says_ex02")
    assert {r["exercise"] for r in rows.values()} == {EX01}, rows
    assert set(rows) == {t.name for t in load_exercises()[EX01].tasks}, rows
    assert all(r["points"] == 0 for r in rows.values()), rows
    for r in rows.values():
        assert "ex02" in r["message"] and "metadata" in r["message"], r

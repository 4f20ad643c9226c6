"""The grading sandbox and the grader's defences, piece by piece (fast: no kernel is started).

The isolation checks run a small Python program inside the sandbox exactly as a kernel is
started (``Sandbox.command``) and assert what it can and cannot see; they skip where bubblewrap
does not work, saying how to install it. tests/grading/test_grading.py grades hostile notebooks end to end.
"""

import ast
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

import attn_course
from attn_course.grading import places
from attn_course.grading import sandbox as sb
from attn_course.grading.catalog import exercise_modules, load_exercises
from attn_course.grading.codec import ResultError, check_bounds, encode, load_bounded
from attn_course.grading.report import clean, clean_text, collect_notebooks, csv_cell, shard, to_csv, to_json
from attn_course.grading.runner import Row, read_results

PKG = Path(attn_course.__file__).resolve().parent
BOX = sb.detect("bwrap")
NEEDS_BWRAP = pytest.mark.skipif(BOX is None, reason="bubblewrap does not work here: install it (Debian/Ubuntu: "
                                                     "`apt-get install bubblewrap`) to test the sandbox")


def _attn_imports(path: Path) -> set[str]:
    """The attn_course modules a file imports (relative imports resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if mod.startswith("attn_course"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("attn_course")}
    return out


def _module_file(mod: str) -> Path | None:
    if mod == "attn_course":
        return PKG / "__init__.py"
    rel = Path(*mod.split(".")[1:])
    for cand in (PKG / rel.with_suffix(".py"), PKG / rel / "__init__.py"):
        if cand.exists():
            return cand
    return None


def reference_modules() -> set[str]:
    """Every attn_course module that defines a task, holds a task's reference, or is imported by
    a task definition (where the references come from)."""
    mods = {f"attn_course.exercises.{m}" for m in exercise_modules()} | {"attn_course.exercises"}
    for ex in load_exercises().values():
        for task in ex.tasks:
            mods.add(task.reference.__module__)
            for name in task.forbidden:
                if name.startswith("attn_course."):
                    parts = name.split(".")
                    mods |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    for m in exercise_modules():
        mods |= _attn_imports(_module_file(f"attn_course.exercises.{m}"))
    # the grading modules the kernel needs (exercise modules import fixtures from them); a package's
    # __init__.py stands for the package itself
    grading = {
        ("attn_course.grading." + f[len("grading/"):-3]).removesuffix(".__init__")
        for f in sb.KERNEL_FILES
        if f.startswith("grading/")
    }
    return {m for m in mods if _module_file(m) is not None and m != "attn_course" and m not in grading}


def test_kernel_files_hold_no_reference():
    allowed = {"attn_course." + f[:-3].replace("/", ".").removesuffix(".__init__") for f in sb.KERNEL_FILES}
    allowed = {m.replace("attn_course.__init__", "attn_course") for m in allowed}
    refs = reference_modules()
    assert {"attn_course.masking", "attn_course.scoring", "attn_course.attention"} <= refs
    assert not allowed & refs, allowed & refs
    for rel in sb.KERNEL_FILES:
        for mod in _attn_imports(PKG / rel):
            if _module_file(mod) is not None:  # a module, not a name imported from one
                assert mod in allowed, f"{rel} imports {mod}, which the sandbox does not have"


def test_stripped_package_has_only_the_kernel_files(tmp_path):
    pkg = Path(sb.stripped_package(str(tmp_path)))
    files = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
    assert files == sorted(sb.KERNEL_FILES + ("grading/confine.py",))


def test_kernel_environment_is_minimal(monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent")
    env = sb.kernel_env(sb.detect("none"), str(tmp_path))
    assert "GITHUB_TOKEN" not in env and "SSH_AUTH_SOCK" not in env and "TMUX" not in env
    assert env["HOME"].startswith(str(tmp_path)) and env["ATTN_COURSE_GRADING"] == "1"


# What a kernel's first code sees inside the sandbox (printed as JSON).
PROBE = r"""
import json, os, resource, socket, sys
out = {"uid": os.getuid(), "pid": os.getpid(), "env": sorted(os.environ), "hostname": socket.gethostname()}
out["root_dirs"] = sorted(os.listdir("/"))
out["home_listing"] = sorted(os.listdir(os.environ["HOME"]))
out["checkout"] = sorted(os.listdir(sys.argv[1])) if os.path.isdir(sys.argv[1]) else None
try:
    out["instructor_home"] = sorted(os.listdir("/root")) if os.path.isdir("/root") else None
except PermissionError:
    out["instructor_home"] = "refused"
try:
    import attn_course.masking
    out["masking"] = attn_course.masking.__file__
except ImportError:
    out["masking"] = None
from attn_course.check import Checker
out["checker"] = Checker("ex01_softmax_attention")("softmax", None) is None
try:
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    out["network"] = True
except OSError:
    out["network"] = False
try:
    open("/usr/attn-test", "w")
    out["usr_writable"] = True
except OSError:
    out["usr_writable"] = False
out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["limits"] = [resource.getrlimit(r)[0] for r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)]
try:
    bytearray(16 << 30)
    out["memory"] = "allocated"
except MemoryError:
    out["memory"] = "refused"
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
try:
    with open("/tmp/big", "wb") as f:
        f.truncate(1 << 30)
    out["file"] = "written"
except OSError:
    out["file"] = "refused"
children, out["forks"] = [], "all"
for _ in range(400):  # more than the process limit
    try:
        pid = os.fork()
    except OSError:
        out["forks"] = len(children)
        break
    if pid == 0:
        import time
        time.sleep(2)
        os._exit(0)
    children.append(pid)
print(json.dumps(out))
"""


ROOT = os.geteuid() == 0
LAYERS = [pytest.param("bwrap", marks=NEEDS_BWRAP),
          pytest.param("fallback", marks=pytest.mark.skipif(not ROOT or bool(sb.fallback_blocker()),
                                                             reason="the fallback layer needs root and a Python "
                                                                    f"runtime any user can run: {sb.fallback_blocker()}"))]

# What the kernel tries on top of PROBE: the escapes of the second security review.
ESCAPES = r"""
import json, os, sys
out = {}
for p in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches"):
    try:
        os.close(os.open(p, os.O_WRONLY))  # opened for writing only: nothing is ever written
        out[p] = "writable"
    except OSError:
        out[p] = "refused"
with open("written-inside", "w") as f:
    f.write("x")
try:
    import mmap
    with open("/dev/shm/big", "wb") as f:
        f.write(b"x" * (100 << 20))
    out["shm"] = "written"
except OSError:
    out["shm"] = "refused"
try:  # the host's /tmp, in the fallback layer (bwrap's /tmp is a private tmpfs)
    with open(f"/tmp/attn-course-escape-{os.getpid()}", "w") as f:
        f.write("x")
    out["host_tmp"] = "written"
except OSError:
    out["host_tmp"] = "refused"
try:
    import ctypes
    out["ptrace"] = ctypes.CDLL(None, use_errno=True).ptrace(16, 1, 0, 0) == 0  # PTRACE_ATTACH to pid 1
except OSError:
    out["ptrace"] = False
print(json.dumps(out))
"""


def _run_inside(layer: str, code: str, *args: str):
    from attn_course.grading.runner import grading_run

    box = sb.detect(layer)
    assert box is not None
    with grading_run(box) as run:
        place = run.new_place()
        cmd = box.command([sys.executable, "-c", code, *args], place, run.package, run.binds)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr[-2000:]
            written = os.stat(os.path.join(place.work, "written-inside")) if code is ESCAPES else None
        finally:
            places.release_place(place)
        assert not os.path.exists(place.base)  # taken down as soon as the kernel stops
    return json.loads(proc.stdout), written, box


@pytest.mark.parametrize("layer", LAYERS)
def test_inside_the_sandbox(layer, monkeypatch):
    monkeypatch.setenv("ATTN_TEST_TOKEN", "tok-secret")
    checkout = str(PKG.parent)
    seen, _, box = _run_inside(layer, PROBE, checkout)
    applied = " ".join(box.applied)
    assert seen["masking"] is None  # the references cannot be imported
    assert seen["checker"] is True  # the in-notebook Checker works without them
    assert "ATTN_TEST_TOKEN" not in seen["env"] and "SSH_AUTH_SOCK" not in seen["env"]
    assert seen["home_listing"] == []
    assert seen["usr_writable"] is False
    assert seen["limits"] == [box.limits.memory_bytes, box.limits.processes, box.limits.file_bytes]
    assert seen["memory"] == "refused" and seen["file"] == "refused"
    assert "processes" in applied
    assert seen["forks"] != "all" and seen["forks"] < box.limits.processes, seen["forks"]
    if layer == "bwrap":
        # Of the course checkout, only the stripped package (and a virtual environment kept inside it).
        venvs = {Path(r).relative_to(checkout).parts[0] for r in sb.runtime_roots() if r.startswith(checkout + os.sep)}
        assert set(seen["checkout"] or []) <= {"attn_course"} | venvs, seen["checkout"]
        assert seen["instructor_home"] in (None, []) or ".pyenv" in seen["instructor_home"]
    else:  # no mount namespace: the machine's files as an unprivileged user sees them
        assert seen["instructor_home"] in (None, "refused")
    if "network" in applied or "seccomp" in applied:
        assert seen["network"] is False
    if "pid namespace" in applied:
        assert max(seen["procs"]) <= 3  # bwrap's init and the kernel: nothing of the machine's
    if "user namespace" in applied:
        assert seen["uid"] == sb.INSIDE_UID
    if ROOT:
        assert seen["uid"] != 0
    if "uts namespace" in applied:
        assert seen["hostname"] == "grading"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_host_root_and_no_sysctl_inside(layer):
    """As root, the second review ran code as host root through a writable /proc/sys."""
    seen, written, box = _run_inside(layer, ESCAPES)
    assert seen["/proc/sys/kernel/core_pattern"] == "refused"
    assert seen["/proc/sys/vm/drop_caches"] == "refused"
    assert seen["ptrace"] is False
    if ROOT:
        assert written.st_uid not in (0, os.geteuid()) and written.st_uid >= places.UID_BASE
    if layer == "bwrap":
        assert seen["shm"] == "refused"  # /dev/shm is a 64 MiB tmpfs
    elif box.landlock:  # no mount namespace: Landlock refuses writes outside the work area
        assert seen["shm"] == "refused" and seen["host_tmp"] == "refused"
    assert not [p for p in Path("/tmp").glob("attn-course-escape-*") if p.stat().st_uid >= places.UID_BASE]


def test_remove_tree_survives_a_deep_tree_and_links(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    fd = os.open(top, os.O_RDONLY)
    for _ in range(3000):  # deeper than a recursive walk and than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        new = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.symlink(str(outside), "link", dir_fd=new)
        os.close(fd)
        fd = new
    os.close(fd)
    places.remove_tree(str(top))
    assert not top.exists() and outside.read_text() == "keep"


def test_results_file_must_be_a_small_regular_file(tmp_path):
    with pytest.raises(ResultError, match="no results file"):
        read_results(str(tmp_path / "none.pt"))
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(ResultError, match="not a regular file"):
        read_results(str(tmp_path / "fifo.pt"))  # returns at once: never blocks on a FIFO
    os.symlink("/etc/passwd", tmp_path / "link.pt")
    with pytest.raises(ResultError, match="a link"):
        read_results(str(tmp_path / "link.pt"))
    with open(tmp_path / "big.pt", "wb") as f:
        f.truncate(65 << 20)
    with pytest.raises(ResultError, match="larger than"):
        read_results(str(tmp_path / "big.pt"))
    torch.save({"outcomes": [encode((torch.ones(2), 3))]}, tmp_path / "ok.pt")
    assert read_results(str(tmp_path / "ok.pt"))["outcomes"][0][1] == 3


def test_decoder_is_bounded():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ResultError, match="nested deeper"):
        check_bounds(deep)
    shared = [[[0] * 1000] * 1000] * 1000  # 10**9 items in a few kB of pickle
    with pytest.raises(ResultError, match="more than"):
        check_bounds(shared)
    with pytest.raises(ResultError, match="tensor elements"):
        check_bounds([torch.zeros(4_000_000)] * 5)
    with pytest.raises(ResultError, match="unreadable"):
        load_bounded(b"not a torch file")


def test_terminal_and_csv_text_are_cleaned():
    assert clean("a\x1b[2Jb\rc\u202ed") == "a?[2Jb?c?d"
    assert [csv_cell(x) for x in ("=1+1", "+x", "-x", "@x", "ok", 3.0)] == ["'=1+1", "'+x", "'-x", "'@x", "ok", 3.0]
    text = to_csv([Row("=cmd|' /C calc'!A0", "ex", "t", 0.0, 1, "failed", "-2+3")])
    assert "'=cmd" in text and ",'-2+3" in text


FORGERY = ("boom\x1b[2J\x1b[H\rnotebook,points\nalice.ipynb,10\x1b]0;title\x07\u202eftel\u2066x\u2069\u200e\u200f"
           "\x9b31m\tend")


@pytest.mark.parametrize("name", ["ok.ipynb", "ev\u202eil\x1b[8m.ipynb"])
def test_reports_cannot_forge_what_cat_shows(name):
    """An error text with escape sequences, carriage returns or bidi overrides comes out inert
    in every CSV cell and JSON string: nothing moves the cursor, clears the screen, reorders text
    or starts a new row."""
    rows = [Row(name, "ex01", "softmax", 0.0, 1, "error", FORGERY), Row(name, "ex01", "t\x1b", 0.0, 1, "failed", " =1+2")]
    csv_text = to_csv(rows)
    json_text = to_json(rows, {"kind": "none", "note": "\x1b[31m"})
    for text in (csv_text.replace("\r\n", "\n"), json_text):  # the CSV's own line ends are CRLF
        assert not any(ord(ch) < 32 and ch not in "\n" or 0x7f <= ord(ch) <= 0x9f for ch in text), repr(text)
        assert not any(unicodedata.category(ch) == "Cf" for ch in text)
    assert json_text.isascii() and "\\u" not in json_text  # cleaned, not merely escaped
    assert len(csv_text.splitlines()) == 3  # the header and two rows: the message's newline is a space
    data = json.loads(json_text)
    assert data["rows"][0]["message"].startswith("boom?[2J?[H?notebook,points alice.ipynb,10?]0;title??ftel?x????31m")
    assert data["rows"][0]["message"].endswith("31m end") and data["sandbox"]["note"] == "?[31m"
    assert ",' =1+2" in csv_text  # a formula behind spaces is quoted too
    assert clean_text("a\r\nb\tc") == "a b c"


def test_uploads_are_collected_as_data(tmp_path):
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "b.ipynb").write_text("{}")  # identical to a
    (tmp_path / "c.ipynb").write_text("{ }")
    os.symlink(tmp_path / "c.ipynb", tmp_path / "d_link.ipynb")
    os.mkfifo(tmp_path / "e_fifo.ipynb")
    os.symlink("/etc", tmp_path / "f_dir_link")
    uploads, missing = collect_notebooks([str(tmp_path), str(tmp_path / "a.ipynb"), str(tmp_path / "nope")])
    assert missing == [str(tmp_path / "nope")]
    by_name = {u.path.name: u for u in uploads}
    assert sorted(by_name) == ["a.ipynb", "b.ipynb", "c.ipynb", "d_link.ipynb", "e_fifo.ipynb"]  # a once
    # Identical uploads name each other, whichever sorts first.
    assert by_name["b.ipynb"].identical_to == [str(tmp_path / "a.ipynb")]
    assert by_name["a.ipynb"].identical_to == [str(tmp_path / "b.ipynb")] and not by_name["c.ipynb"].identical_to
    assert "symbolic link" in by_name["d_link.ipynb"].problem and "FIFO" in by_name["e_fifo.ipynb"].problem


def test_shards_are_deterministic_and_cover_everything(tmp_path):
    for i in range(7):
        (tmp_path / f"s{i}.ipynb").write_text(str(i))
    uploads, _ = collect_notebooks([str(tmp_path)])
    parts = [[u.path.name for u in shard(uploads, k, 3)] for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(u.path.name for u in uploads)
    assert parts == [[u.path.name for u in shard(list(reversed(uploads)), k, 3)] for k in (1, 2, 3)]


def test_checker_needs_no_reference_under_the_grader(monkeypatch):
    import attn_course.check as check

    monkeypatch.setenv("ATTN_COURSE_GRADING", "1")
    monkeypatch.setattr(check, "load_exercises", lambda: (_ for _ in ()).throw(ImportError("no references")))
    assert check.Checker("ex01_softmax_attention")("softmax", print) is None


def test_private_tmp_is_mounted_before_the_runtime_and_work_folders():
    """bwrap mounts in order: a checkout or virtual environment under /tmp (as in a CI clone
    there) must be bound on top of the private /tmp, not hidden by it."""
    box = sb.Sandbox(kind="bwrap", bwrap="/usr/bin/bwrap")
    args = box.command(["/usr/bin/python3", "-m", "ipykernel"], places.Place("/tmp/k", "/tmp/w", "/tmp/in"), "/tmp/pkg")
    tmp = next(i for i in range(len(args) - 1) if args[i] == "--tmpfs" and args[i + 1] == "/tmp")
    binds = [i for i, a in enumerate(args) if a in ("--ro-bind", "--bind") and not args[i + 1].startswith("/proc")]
    assert binds and tmp < min(binds), args


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs: needs root")
def test_a_killed_graders_run_is_cleared_by_the_next(tmp_path):
    from attn_course.grading.runner import RUN_PREFIX, sweep_stale_runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    stale, alive = tmp_path / f"{RUN_PREFIX}stale", tmp_path / f"{RUN_PREFIX}alive"
    for run, pid in ((stale, dead.pid), (alive, os.getpid())):
        work = run / "n0-1" / "work"
        work.mkdir(parents=True)
        (run / "grader.pid").write_text(str(pid))
        places.mount("tmpfs", str(work), "tmpfs", 0, "size=1m")
        (work / "left.txt").write_text("x")
    try:
        assert sweep_stale_runs(str(tmp_path), {}) == [str(stale)]
        assert not stale.exists() and (alive / "n0-1" / "work" / "left.txt").exists()  # a live run is its own
        assert places.mounts_below(str(stale)) == []
    finally:
        for point in places.mounts_below(str(tmp_path)):
            places.unmount(point)

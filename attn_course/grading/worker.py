"""One process per graded notebook: whatever a kernel floods its client with costs that notebook only.

``grade_notebook_isolated`` runs ``runner.grade_notebook`` in a child process (forked from a
forkserver that imported the grader once) whose address space is capped at what it starts with
plus ``CLIENT_MEMORY_BYTES``: a multipart message of gigabytes, or a notebook whose text makes
a step slow, ends that process, and the notebook gets 0 with a message; the grader and the
other notebooks go on. The child sends its rows back as size-capped JSON; whatever a killed
child left (kernel processes, mounts, folders) is taken down by name (``runner.clear_places``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import fields
from pathlib import Path

import torch

from .catalog import EXERCISE_PACKAGE, exercise_modules, load_exercises
from .runner import (
    STARTUP_SECONDS,
    GradingRun,
    Row,
    clear_places,
    exercise_from_name,
    grade_notebook,
    wall_clock_for,
    zero_rows,
)
from .tasks import Exercise

CLIENT_MEMORY_BYTES = 3 << 30  # address space a notebook's grading process may add to what it starts with
_PRELOAD = ("torch", "nbclient", "nbformat", "jupyter_client.manager", "zmq.asyncio", "attn_course.grading.runner",
            "attn_course.grading.worker", "attn_course.grading.tasks")
_worker_ctx = None
_worker_lock = threading.Lock()


def _worker_context():
    """A forkserver whose process has imported the grader once: each notebook's process is a fork
    of it (fast, and no thread of the grader's is copied into it)."""
    global _worker_ctx
    import multiprocessing

    with _worker_lock:
        if _worker_ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([*_PRELOAD, *(f"{EXERCISE_PACKAGE}.{m}" for m in exercise_modules())])
            _worker_ctx = ctx
    return _worker_ctx


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _worker_main(conn, path: str, timeout: float, call_timeout: float, run: GradingRun,
                 wall_clock: float | None, index: int) -> None:
    import resource

    try:
        limit = _vm_size() + CLIENT_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    torch.set_num_threads(1)
    run.prefix, run.serial_base = f"n{index}-", (index + 1) * 1000
    rows = grade_notebook(path, load_exercises(), timeout, call_timeout, run=run, wall_clock=wall_clock)
    conn.send_bytes(json.dumps([r.as_dict() for r in rows], ensure_ascii=True).encode())
    conn.close()


def grade_notebook_isolated(path: str | Path, exercises: dict[str, Exercise], timeout: float, call_timeout: float,
                            run: GradingRun, wall_clock: float | None, index: int) -> list[Row]:
    """``grade_notebook`` in a process of its own with a memory limit: a kernel that floods its
    client, or a notebook whose text makes a step slow, costs that notebook only. Never raises."""
    path = Path(path)
    ex = exercise_from_name(path.name, exercises)
    wall = wall_clock if wall_clock is not None else (wall_clock_for(ex, timeout, call_timeout) if ex else
                                                      timeout + 20 * call_timeout + 2 * STARTUP_SECONDS)
    rows: list[Row] | None = None
    why = "the grader's process for this notebook stopped (out of memory: did the notebook flood it?)"
    proc = None
    try:
        ctx = _worker_context()
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_main, args=(sender, str(path), timeout, call_timeout, run, wall_clock, index),
                           daemon=True)
        proc.start()
        sender.close()
        if receiver.poll(wall + STARTUP_SECONDS + 30):
            data = json.loads(receiver.recv_bytes(maxlength=16 << 20))
            rows = [Row(**{f.name: d[f.name] for f in fields(Row)}) for d in data]
        else:
            why = "the grader's process for this notebook did not finish in time"
    except EOFError:
        pass
    except Exception as exc:
        why = f"internal grader error: {type(exc).__name__}: {exc}"
    finally:
        if proc is not None:
            try:
                proc.kill()
                proc.join(10)
            except Exception:
                pass
        clear_places(run.root, list(run.cgroups), f"n{index}-")
    return rows if rows is not None else zero_rows(str(path), ex, "error", why)

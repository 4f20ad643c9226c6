"""Grade many submissions and write the report (JSON, CSV, and a summary on the terminal)."""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .runner import Row, grade_notebook
from .tasks import load_exercises

FIELDS = ["notebook", "exercise", "task", "points", "max_points", "status", "message"]


def collect_notebooks(paths: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Expand folders into the notebooks below them; return (notebooks, paths that don't exist)."""
    found: list[Path] = []
    missing: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found += sorted(q for q in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif path.is_file():
            found.append(path)
        else:
            missing.append(p)
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, missing


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so that processes a submission detaches can be ended."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _end_descendants() -> None:
    """Kill whatever the kernels left running (a submission's background writer, say)."""
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
    except Exception:
        pass


def grade_paths(notebooks: list[Path], timeout: float = 120.0, call_timeout: float = 20.0, jobs: int = 1,
                progress: bool = True) -> list[Row]:
    """Grade every notebook (``jobs`` at a time); rows come back in the order of ``notebooks``."""
    exercises = load_exercises()  # import every reference before any submission runs
    _become_subreaper()
    results: dict[int, list[Row]] = {}
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(notebooks), desc="grading", unit="nb", disable=not progress, file=sys.stderr)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(grade_notebook, nb, exercises, timeout, call_timeout): i
                       for i, nb in enumerate(notebooks)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # grade_notebook should never raise; still lose nothing
                    results[i] = [Row(str(notebooks[i]), "?", "-", 0.0, 0, "error", f"internal grader error: {exc}")]
                bar.update(1)
        bar.close()
    finally:
        _end_descendants()
    return [row for i in range(len(notebooks)) for row in results[i]]


def totals(rows: list[Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        t = out.setdefault(r.notebook, {"points": 0.0, "max_points": 0.0})
        t["points"] += r.points
        t["max_points"] += r.max_points
    return out


def _write_atomic(path: str, text: str) -> None:
    """Write via a temporary file and a rename, so the report on disk is ours and whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, target)


def to_json(rows: list[Row]) -> str:
    return json.dumps({
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": [r.as_dict() for r in rows],
        "totals": totals(rows),
    }, indent=2, ensure_ascii=False)


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow(r.as_dict())
    return buf.getvalue()


def write_reports(rows: list[Row], json_path: str | None, csv_path: str | None) -> None:
    if json_path:
        _write_atomic(json_path, to_json(rows))
    if csv_path:
        _write_atomic(csv_path, to_csv(rows))


def summary(rows: list[Row]) -> str:
    lines = []
    for nb, t in totals(rows).items():
        lines.append(f"{t['points']:6.1f} / {t['max_points']:<5.0f} {nb}")
        for r in rows:
            if r.notebook == nb and r.status != "passed":
                lines.append(f"{'':15}{r.task}: {r.message}")
    return "\n".join(lines)

"""Grade many submissions and write the report (JSON, CSV, a progress log, a summary on the terminal).

Uploads are data: only regular files are graded (a link, a FIFO or a device is reported,
never followed or opened for reading), identical uploads are flagged, and every name is
cleaned of control characters before it reaches a terminal, and of spreadsheet formulas
before it reaches a CSV cell.

A report nothing can stop: each notebook's rows are appended to a progress log (JSON lines
beside the report, synced to disk) as soon as it is graded, so a crash or a kill loses at
most the notebooks in flight and ``--resume`` goes on from the log; the final JSON and CSV
are written atomically (a temporary file, then a rename) to regular files only.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import load_exercises
from .places import reachable_by_others
from .runner import GradingRun, Row, grading_run, read_upload
from .sandbox import SANDBOXED_KINDS, Sandbox, hide_from_others
from .worker import grade_notebook_isolated

FIELDS = ["notebook", "exercise", "task", "points", "max_points", "status", "message"]


@dataclass
class Upload:
    """One submitted file. ``problem`` says why it is not graded; ``identical_to`` names the identical ones."""

    path: Path
    problem: str = ""
    sha256: str = ""
    identical_to: list[str] = field(default_factory=list)  # every other upload with the same bytes


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _upload(path: Path) -> Upload:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return Upload(path, problem=f"not graded: {_kind(st.st_mode)}, not a regular file "
                                    "(uploads are graded as regular files only, never through a link)")
    return Upload(path)


def collect_notebooks(paths: Iterable[str]) -> tuple[list[Upload], list[str]]:
    """Expand folders into the notebooks below them; return (uploads, paths that don't exist).

    Folders are walked without following links; a notebook that is a link (or not a regular
    file) is returned with a ``problem`` so that the report shows it. A path given twice is
    graded once (and said so on stderr).
    """
    found: list[Upload] = []
    missing: list[str] = []
    for p in paths:
        path = Path(p)
        try:
            st = os.lstat(path)
        except OSError:
            missing.append(p)
            continue
        if stat.S_ISDIR(st.st_mode):
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d != ".ipynb_checkpoints")
                for name in sorted(filenames):
                    if name.endswith(".ipynb"):
                        found.append(_upload(Path(dirpath) / name))
                for name in dirnames:  # a link to a folder named like a notebook
                    if name.endswith(".ipynb") and os.path.islink(os.path.join(dirpath, name)):
                        found.append(_upload(Path(dirpath) / name))
        else:
            found.append(_upload(path))
    unique: list[Upload] = []
    seen: dict[tuple[int, int] | str, str] = {}
    for u in found:
        try:
            st = os.lstat(u.path)
            key: tuple[int, int] | str = (st.st_dev, st.st_ino)
        except OSError:
            key = str(u.path)
        if key in seen:
            print(f"attn-course grade: {clean(str(u.path))} is the same file as {clean(seen[key])}; graded once",
                  file=sys.stderr)
            continue
        seen[key] = str(u.path)
        unique.append(u)
    _flag_duplicates(unique)
    return unique, missing


def _flag_duplicates(uploads: list[Upload]) -> None:
    """Every member of a group of identical uploads names all the others (no one is "the original")."""
    groups: dict[str, list[Upload]] = {}
    for u in uploads:
        if u.problem:
            continue
        try:
            u.sha256 = hashlib.sha256(read_upload(u.path)).hexdigest()
        except (OSError, ValueError):
            continue
        groups.setdefault(u.sha256, []).append(u)
    for group in groups.values():
        if len(group) > 1:
            for u in group:
                u.identical_to = sorted(str(o.path) for o in group if o is not u)


MAX_NAMED_DUPLICATES = 5


def identical_note(others: list[str]) -> str:
    """" [identical to A, B]", naming at most ``MAX_NAMED_DUPLICATES`` (then "and N more")."""
    if not others:
        return ""
    named = ", ".join(others[:MAX_NAMED_DUPLICATES])
    more = len(others) - MAX_NAMED_DUPLICATES
    return f" [identical to {named}{f' and {more} more' if more > 0 else ''}]"


def shard(uploads: list[Upload], k: int, n: int) -> list[Upload]:
    """The ``k``-th (1-based) of ``n`` deterministic shards: every n-th upload in path order."""
    ordered = sorted(uploads, key=lambda u: str(u.path))
    return [u for i, u in enumerate(ordered) if i % n == k - 1]


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so that processes an unsandboxed kernel detaches can be ended."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _end_descendants() -> None:
    """Kill whatever is left below the grader. With the sandbox, nothing is (a killed bwrap ends its
    whole PID namespace); without it, this is best effort: a process that keeps forking can escape."""
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
    except Exception:
        pass


class ProgressLog:
    """Append-only JSON lines: one header per run, then one record per graded notebook, synced to disk."""

    def __init__(self, path: str):
        self.path = path
        _check_target(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(path, flags, 0o600)
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise ValueError(f"{path} is not a regular file")
        if st.st_size and not read_regular(path)[-1:] == b"\n":
            os.write(self.fd, b"\n")  # a line torn by a killed grader stays a line of its own

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, ensure_ascii=True) + "\n").encode())
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def read_progress(path: str) -> tuple[dict[tuple[str, str], list[Row]], list[dict[str, Any]]]:
    """Rows already graded, by (notebook, sha256), and the run headers; a torn last line is ignored."""
    done: dict[tuple[str, str], list[Row]] = {}
    headers: list[dict[str, Any]] = []
    try:
        text = read_regular(path).decode("utf-8", "replace")
    except FileNotFoundError:
        return done, headers
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("type") == "run":
            headers.append(rec)
        elif rec.get("type") == "notebook":
            try:
                rows = [Row(**{k: r[k] for k in FIELDS}) for r in rec["rows"]]
            except (KeyError, TypeError):
                continue
            done[(str(rec.get("notebook")), str(rec.get("sha256", "")))] = rows
    return done, headers


def _rows_for(upload: Upload, rows: list[Row]) -> list[Row]:
    note = identical_note(upload.identical_to)
    for r in rows:
        r.message += note
    return rows


def grade_paths(uploads: list[Upload], sandbox: Sandbox, timeout: float = 120.0, call_timeout: float = 20.0,
                jobs: int = 1, progress: bool = True, log: ProgressLog | None = None,
                done: dict[tuple[str, str], list[Row]] | None = None, wall_clock: float | None = None,
                seed: int | None = None) -> list[Row]:
    """Grade every upload (``jobs`` at a time); rows come back in the order of ``uploads``.

    Rows in ``done`` (from a progress log) are reused for uploads with the same path and
    content; every newly graded notebook is appended to ``log`` at once.
    """
    exercises = load_exercises()  # import every reference before any submission runs
    _become_subreaper()
    done = done or {}
    results: dict[int, list[Row]] = {}
    todo: list[int] = []
    for i, u in enumerate(uploads):
        if u.problem:
            results[i] = [Row(str(u.path), "?", "-", 0.0, 0, "invalid", u.problem)]
        elif (str(u.path), u.sha256) in done:
            results[i] = done[(str(u.path), u.sha256)]
        else:
            todo.append(i)
    try:
        from tqdm.auto import tqdm

        if sandbox.kind == "fallback":  # no mount namespace hides the other uploads: permissions do
            readable = [str(uploads[i].path) for i in todo if reachable_by_others(str(uploads[i].path))]
            failed = hide_from_others(readable)
            if readable:
                sandbox.applied.append(f"{len(readable) - len(failed)} uploads made unreadable to other users")
            if failed:
                sandbox.missing.append("uploads still readable by other users: " + ", ".join(failed[:5]))
        with grading_run(sandbox, seed) as run:
            bar = tqdm(total=len(todo), desc="grading", unit="nb", disable=not progress, file=sys.stderr)
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                futures = {pool.submit(_grade_one, uploads[i], exercises, timeout, call_timeout, run, wall_clock, i): i
                           for i in todo}
                started = time.monotonic()
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        rows, seconds = fut.result()
                    except Exception as exc:  # grade_notebook should never raise; still lose nothing
                        rows = [Row(str(uploads[i].path), "?", "-", 0.0, 0, "error", f"internal grader error: {exc}")]
                        seconds = time.monotonic() - started
                    results[i] = _rows_for(uploads[i], rows)
                    if log is not None:
                        log.write({"type": "notebook", "notebook": str(uploads[i].path), "sha256": uploads[i].sha256,
                                   "seconds": round(seconds, 2), "rows": [r.as_dict() for r in results[i]]})
                    bar.update(1)
            bar.close()
    finally:
        _end_descendants()
    return [row for i in range(len(uploads)) for row in results[i]]


def _grade_one(upload: Upload, exercises, timeout: float, call_timeout: float, run: GradingRun,
               wall_clock: float | None, index: int) -> tuple[list[Row], float]:
    start = time.monotonic()
    rows = grade_notebook_isolated(upload.path, exercises, timeout, call_timeout, run, wall_clock, index)
    return rows, time.monotonic() - start


def totals(rows: list[Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        t = out.setdefault(r.notebook, {"points": 0.0, "max_points": 0.0})
        t["points"] += r.points
        t["max_points"] += r.max_points
    return out


def read_regular(path: str, cap: int = 1 << 30) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(cap)
    finally:
        os.close(fd)


def _check_target(path: str) -> None:
    """A report path must be a regular file or not exist yet (never a link, a folder or a FIFO)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is {_kind(st.st_mode)}; a report is only written to a regular file")


def check_targets(paths: Iterable[str | None]) -> str | None:
    """None when every report path can be written; else the reason it cannot."""
    for p in paths:
        if p:
            try:
                _check_target(p)
            except ValueError as exc:
                return str(exc)
    return None


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file and a rename, so the report on disk is ours and whole."""
    _check_target(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _check_target(path)
        os.replace(tmp, target)  # replaces a file, or fails on a folder: never follows a link
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def to_json(rows: list[Row], sandbox: dict[str, Any] | list[dict[str, Any]] | None = None,
            extra: dict[str, Any] | None = None) -> str:
    """The JSON report: every string (keys too) cleaned with ``clean_text``, written as ASCII."""
    return json.dumps(clean_strings({
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sandbox": sandbox,
        **(extra or {}),
        "rows": [r.as_dict() for r in rows],
        "totals": totals(rows),
    }), indent=2, ensure_ascii=True)


def clean_strings(value: Any) -> Any:
    """``clean_text`` applied to every string in nested dicts and lists (a copy)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_strings(k): clean_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_strings(v) for v in value]
    return value


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cleaned cell (``clean_text``); one a spreadsheet would open as a formula (= + - @ first,
    spaces aside) is prefixed with a quote."""
    if not isinstance(value, str):
        return value
    value = clean_text(value)
    if value.lstrip(" ").startswith(_FORMULA):
        return "'" + value
    return value


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_cell(v) for k, v in r.as_dict().items()})
    return buf.getvalue()


def write_reports(rows: list[Row], json_path: str | None, csv_path: str | None,
                  sandbox: dict[str, Any] | list[dict[str, Any]] | None = None,
                  extra: dict[str, Any] | None = None) -> list[str]:
    """Write the reports; return the paths that could not be written (each with its reason)."""
    failed = []
    for path, text in ((json_path, lambda: to_json(rows, sandbox, extra)), (csv_path, lambda: to_csv(rows))):
        if path:
            try:
                write_atomic(path, text())
            except (OSError, ValueError) as exc:
                failed.append(f"{path}: {exc}")
    return failed


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BREAKS = re.compile(r"\r\n|[\n\t\v\f\x85\u2028\u2029]")


def clean(text: str) -> str:
    """Text safe for a terminal: control and format characters (escapes, bidi overrides) become '?'."""
    text = _CONTROL.sub("?", text)
    return "".join("?" if unicodedata.category(ch) in ("Cf", "Cs", "Co") else ch for ch in text)


def clean_text(text: str) -> str:
    """A report cell or JSON string: line breaks and tabs become a space, then ``clean``.

    C0/C1 controls (escape sequences, a lone carriage return that would overwrite a line) and
    format characters (bidi overrides and isolates, zero-width marks) become '?', so neither
    ``cat report.csv`` nor a viewer of the JSON shows anything but what the grader wrote.
    """
    return clean(_BREAKS.sub(" ", text))


def summary(rows: list[Row]) -> str:
    lines = []
    for nb, t in totals(rows).items():
        lines.append(f"{t['points']:6.1f} / {t['max_points']:<5.0f} {clean(nb)}")
        for r in rows:
            if r.notebook == nb and r.status != "passed":
                lines.append(f"{'':15}{clean(r.task)}: {clean(r.message)}")
    return "\n".join(lines)


def read_report(path: str) -> tuple[list[Row], list[dict[str, Any]]]:
    """The rows and sandbox descriptions of one JSON report (a merged one may hold several)."""
    data = json.loads(read_regular(path).decode("utf-8"))
    rows = [Row(**{k: r[k] for k in FIELDS}) for r in data["rows"]]
    sb = data.get("sandbox")
    return rows, sb if isinstance(sb, list) else [sb] if isinstance(sb, dict) else []


def merge_reports(paths: list[str]) -> tuple[list[Row], list[dict[str, Any]], list[str]]:
    """Rows and sandbox descriptions of shard reports (JSON, or progress logs), and problems found."""
    rows: list[Row] = []
    sandboxes: list[dict[str, Any]] = []
    problems: list[str] = []
    owner: dict[str, str] = {}
    for p in paths:
        if p.endswith(".jsonl"):
            done, headers = read_progress(p)
            part = [r for rs in done.values() for r in rs]
            sandboxes += [h.get("sandbox") for h in headers if isinstance(h.get("sandbox"), dict)]
        else:
            part, boxes = read_report(p)
            sandboxes += boxes
        for nb in dict.fromkeys(r.notebook for r in part):
            if nb in owner and owner[nb] != p:
                problems.append(f"{nb} is in both {owner[nb]} and {p}")
            owner.setdefault(nb, p)
        rows += part
    if any(s.get("kind") not in SANDBOXED_KINDS for s in sandboxes) or not sandboxes:
        problems.append("some shards ran without a sandbox (or do not say)")
    return rows, sandboxes, problems

"""The ``attn-course`` command.

    attn-course grade PATH... [--sandbox auto|bwrap|fallback|none] [--memory SIZE] [--cpus N] [--disk SIZE]
                      [--timeout S] [--call-timeout S]
                      [--wall-clock S] [--jobs N] [--shard K/N] [--json F] [--csv F] [--resume]
    attn-course merge-reports REPORT... [--json F] [--csv F]
    attn-course build-exercises [--check]
    attn-course strip NOTEBOOK...
    attn-course export REPORT... [--canvas F] [--roster F] [--sheet F] [--feedback DIR]
    attn-course check-points REPORT... [--min-fraction X]
    attn-course gradescope-results REPORT --out F   |   --stopped LOG --out F
    attn-course gradescope-build [--out autograder.zip]
    attn-course classroom-config [--root .] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _size(text: str) -> int:
    """'512M', '1.5G', '4096' (bytes) -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}") from None
    if value < 1 << 20:
        raise argparse.ArgumentTypeError(f"must be at least 1M, got {text}")
    return int(value)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 2/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= K <= N, got {text}")
    return k, n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attn-course", description="Tools of the attention-mechanisms course.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade submitted exercise notebooks",
                       description="Run each submitted notebook in its own sandboxed kernel and score every task. "
                                   "Exit status is 0 whenever grading ran and the report was written, whatever "
                                   "the scores; 1 when a report could not be written; 2 on a usage error. "
                                   "Put the uploads after `--` when a name could look like an option.")
    g.add_argument("paths", nargs="+", metavar="PATH", help="a submitted notebook, or a folder of them")
    g.add_argument("--sandbox", choices=("auto", "bwrap", "fallback", "none"), default="auto",
                   help="auto (default): bubblewrap where it works, else (as root) the fallback layer, else refuse "
                        "to grade; bwrap or fallback: that layer only; none: run kernels unsandboxed (only for "
                        "uploads you trust); the report says which")
    g.add_argument("--memory", type=_size, default=None, metavar="SIZE",
                   help="memory of one kernel, all its processes, tmpfs and shared memory together (default 4G; "
                        "needs root for the cgroup)")
    g.add_argument("--cpus", type=_positive(float), default=None, help="CPU share of one kernel (default 1)")
    g.add_argument("--disk", type=_size, default=None, metavar="SIZE",
                   help="size of each writable area of a kernel: its work area and its /tmp (default 512M)")
    g.add_argument("--timeout", type=_positive(float), default=120.0,
                   help="seconds for running one notebook's cells (default 120)")
    g.add_argument("--call-timeout", type=_positive(float), default=20.0,
                   help="seconds for each graded function's calls (default 20)")
    g.add_argument("--wall-clock", type=_positive(float), default=None,
                   help="hard limit in seconds for everything one notebook does; its sandbox is killed then "
                        "(default: timeout + call-timeout x (tasks + 1) + 120)")
    g.add_argument("--jobs", "-j", type=_positive(int), default=1, help="grade N notebooks at once")
    g.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="grade only the K-th of N deterministic shards (give every shard the same PATHs)")
    g.add_argument("--json", metavar="FILE", help="write the report as JSON")
    g.add_argument("--csv", metavar="FILE", help="write the report as CSV (default grade-report.csv "
                                                 "when neither --json nor --csv is given)")
    g.add_argument("--log", metavar="FILE", help="progress log, one JSON line per graded notebook "
                                                 "(default: the report's name with .jsonl)")
    g.add_argument("--resume", action="store_true",
                   help="reuse the rows in the progress log for notebooks that have not changed")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")

    m = sub.add_parser("merge-reports", help="join the JSON reports (or progress logs) of shards into one")
    m.add_argument("reports", nargs="+", metavar="REPORT")
    m.add_argument("--json", metavar="FILE")
    m.add_argument("--csv", metavar="FILE", help="(default grade-report.csv when neither is given)")

    s = sub.add_parser("strip", help="remove outputs and execution counts from notebooks, in place")
    s.add_argument("paths", nargs="+", metavar="NOTEBOOK")

    b = sub.add_parser("build-exercises", help="generate learner notebooks from exercises/source/")
    b.add_argument("--root", default=".", help="the course checkout (default: current folder)")
    b.add_argument("--check", action="store_true", help="exit 1 if a learner notebook is out of date")
    _add_format_parsers(sub)
    return p


def _add_format_parsers(sub) -> None:
    """The commands that turn a grader's JSON report into what a platform or a gradebook takes."""
    e = sub.add_parser("export", help="a Canvas gradebook CSV, grade sheets and feedback files from JSON reports",
                       description="Who an upload belongs to: the roster (by file name, then login), else the "
                                   "file name (Canvas bulk download login_userid_submissionid_..., or "
                                   "login_exNN_...), else the folder it is in.")
    e.add_argument("reports", nargs="+", metavar="REPORT", help="JSON reports of `attn-course grade`")
    e.add_argument("--canvas", metavar="FILE", help="Canvas gradebook import: one column per exercise")
    e.add_argument("--roster", metavar="FILE", help="CSV: file or login, and name, id, sis_user_id, "
                                                    "sis_login_id, section")
    e.add_argument("--sheet", metavar="FILE", help="otter-style grade sheet, one per exercise: FILE's name "
                                                   "with _<exercise> before its suffix")
    e.add_argument("--feedback", metavar="DIR", help="one Markdown feedback file per student, no expected values")

    c = sub.add_parser("check-points", help="exit 0 when the reports' points reach a fraction of the maximum")
    c.add_argument("reports", nargs="+", metavar="REPORT")
    c.add_argument("--min-fraction", type=float, default=1.0, help="fraction of the maximum needed (default 1)")

    r = sub.add_parser("gradescope-results", help="Gradescope's results.json from a JSON report")
    r.add_argument("report", nargs="?", metavar="REPORT")
    r.add_argument("--stopped", metavar="LOG", help="no report: write 0 points and why (the LOG's last lines)")
    r.add_argument("--out", required=True, metavar="FILE")

    z = sub.add_parser("gradescope-build", help="the autograder zip to upload to Gradescope")
    z.add_argument("--out", default="autograder.zip", metavar="FILE")

    k = sub.add_parser("classroom-config", help="write GitHub Classroom's autograding files from the exercises")
    k.add_argument("--root", default=".", help="the course checkout (default: current folder)")
    k.add_argument("--check", action="store_true", help="exit 1 if the committed files are out of date")


def isolate_grader() -> None:
    """What ``python -I`` gives, for a grader started any way: no imports from the current folder
    (where uploads may lie), and every dependency imported now, before any upload is read."""
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    import jupyter_client.manager  # noqa: F401
    import nbclient  # noqa: F401
    import nbformat  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import tqdm.auto  # noqa: F401
    import zmq.asyncio  # noqa: F401

    from .grading import report, runner, sandbox  # noqa: F401
    from .grading.catalog import load_exercises

    load_exercises()


def _default_log(json_path: str | None, csv_path: str | None) -> str:
    base = json_path or csv_path or "grade-report.csv"
    root, _ = os.path.splitext(base)
    return root + ".jsonl"


def _grade(args: argparse.Namespace) -> int:
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    from .grading.report import (
        ProgressLog,
        check_targets,
        clean,
        collect_notebooks,
        grade_paths,
        read_progress,
        shard,
        summary,
        write_reports,
    )
    from .grading.sandbox import detect

    uploads, missing = collect_notebooks(args.paths)
    if missing:
        print(f"attn-course grade: no such file or folder: {clean(', '.join(missing))}", file=sys.stderr)
        return 2
    if not uploads:
        print("attn-course grade: no .ipynb files found in " + clean(", ".join(args.paths)), file=sys.stderr)
        return 2
    if args.shard:
        uploads = shard(uploads, *args.shard)
    csv_path = args.csv if (args.csv or args.json) else "grade-report.csv"
    log_path = args.log or _default_log(args.json, csv_path)
    problem = check_targets([args.json, csv_path, log_path])
    if problem:
        print(f"attn-course grade: {clean(problem)}", file=sys.stderr)
        return 2
    isolate_grader()  # before any upload runs
    from dataclasses import replace

    from .grading.sandbox import Limits

    limits = Limits()
    if args.memory:
        limits = replace(limits, total_memory_bytes=args.memory)
    if args.cpus:
        limits = replace(limits, cpus=args.cpus)
    if args.disk:
        limits = replace(limits, tmp_bytes=args.disk, work_bytes=args.disk, shm_bytes=min(limits.shm_bytes, args.disk))
    box = detect(args.sandbox, limits)
    if box is None:
        print(f"attn-course grade: no sandbox of the kind asked for (--sandbox {args.sandbox}) works here. "
              "bubblewrap (bwrap) is not installed or cannot make namespaces, and the fallback layer needs the "
              "grader to run as root. Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
              "`sudo dnf install bubblewrap`), or grade in a Linux container or VM (macOS, Windows). "
              "To grade trusted notebooks without a sandbox, pass --sandbox none.", file=sys.stderr)
        return 2
    if not box.isolated:
        print("attn-course grade: WARNING: grading without a sandbox (--sandbox none): every upload runs as you, "
              "with your files, network and processes in reach", file=sys.stderr)
    done = {}
    if args.resume:
        done, _ = read_progress(log_path)
    log = ProgressLog(log_path)
    try:
        import time

        log.write({"type": "run", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sandbox": box.describe(),
                   "shard": list(args.shard) if args.shard else None})
        rows = grade_paths(uploads, box, timeout=args.timeout, call_timeout=args.call_timeout, jobs=args.jobs,
                           progress=not args.quiet, log=log, done=done, wall_clock=args.wall_clock)
    finally:
        log.close()
    extra = {"shard": list(args.shard) if args.shard else None}
    failed = write_reports(rows, args.json, csv_path, box.describe(), extra)
    if not args.quiet:
        print(summary(rows))
        print("sandbox: " + box.summary())
        print("report: " + clean(", ".join(p for p in (args.json, csv_path, log_path) if p)))
    for f in failed:
        print(f"attn-course grade: could not write {clean(f)}; every row is in {clean(log_path)}", file=sys.stderr)
    return 1 if failed else 0


def _merge(args: argparse.Namespace) -> int:
    isolate_grader()
    from .grading.report import check_targets, clean, merge_reports, write_reports

    csv_path = args.csv if (args.csv or args.json) else "grade-report.csv"
    problem = check_targets([args.json, csv_path])
    if problem:
        print(f"attn-course merge-reports: {clean(problem)}", file=sys.stderr)
        return 2
    try:
        rows, sandboxes, problems = merge_reports(args.reports)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"attn-course merge-reports: {clean(str(exc))}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"attn-course merge-reports: warning: {clean(p)}", file=sys.stderr)
    failed = write_reports(rows, args.json, csv_path, sandboxes, {"merged_from": list(args.reports)})
    for f in failed:
        print(f"attn-course merge-reports: could not write {clean(f)}", file=sys.stderr)
    return 1 if failed else 0


def _format_command(args: argparse.Namespace) -> int | None:
    """Run export, check-points, gradescope-* or classroom-config; None for any other command."""
    import json
    from pathlib import Path

    from .grading import formats, platforms
    from .grading.catalog import load_exercises
    from .grading.report import clean, write_atomic

    name = f"attn-course {args.command}"
    try:
        if args.command == "export":
            rows, _ = formats.read_rows(args.reports)
            exercises = load_exercises()
            roster = formats.read_roster(args.roster) if args.roster else None
            if args.canvas:
                write_atomic(args.canvas, formats.canvas_csv(rows, exercises, roster))
            if args.sheet:
                base = Path(args.sheet)
                for ex_id, text in formats.grade_sheets(rows, exercises, roster).items():
                    write_atomic(str(base.with_name(f"{base.stem}_{ex_id}{base.suffix or '.csv'}")), text)
            if args.feedback:
                for file_name, text in formats.feedback_files(rows, roster).items():
                    write_atomic(str(Path(args.feedback) / file_name), text)
            return 0
        if args.command == "check-points":
            rows, _ = formats.read_rows(args.reports)
            points, top = sum(r.points for r in rows), sum(r.max_points for r in rows)
            ok = top > 0 and points >= args.min_fraction * top - 1e-9
            print(f"{points:g} of {top:g} points: {'pass' if ok else 'fail'} (needs {args.min_fraction:g} of them)")
            for r in rows:
                if r.status != "passed":
                    print(f"  {clean(r.task)}: {clean(formats.strip_expected(r.message))}")
            return 0 if ok else 1
        if args.command == "gradescope-results":
            if args.stopped:
                log = Path(args.stopped).read_text(errors="replace") if Path(args.stopped).is_file() else ""
                results = formats.gradescope_stopped(log)
            elif args.report:
                results = formats.gradescope_results(*formats.read_rows([args.report]))
            else:
                print(f"{name}: give a REPORT or --stopped LOG", file=sys.stderr)
                return 2
            write_atomic(args.out, json.dumps(results, indent=2, ensure_ascii=True) + "\n")
            return 0
        if args.command == "gradescope-build":
            names = platforms.build_gradescope_zip(args.out)
            print(f"{args.out}: {len(names)} files (setup.sh, run_autograder, the course under course/)")
            return 0
        if args.command == "classroom-config":
            stale = []
            for rel, text in platforms.classroom_files(load_exercises()).items():
                path = Path(args.root) / rel
                if path.is_file() and path.read_text() == text:
                    continue
                stale.append(rel)
                if not args.check:
                    write_atomic(str(path), text)
            if args.check and stale:
                print(f"{name}: out of date (run `attn-course classroom-config`): {', '.join(stale)}", file=sys.stderr)
                return 1
            return 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{name}: {clean(str(exc))}", file=sys.stderr)
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = _format_command(args)
    if done is not None:
        return done
    if args.command == "grade":
        return _grade(args)
    if args.command == "merge-reports":
        return _merge(args)
    if args.command == "strip":
        import nbformat

        for path in args.paths:
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
                cell.get("metadata", {}).pop("execution", None)
            nb.metadata.pop("widgets", None)
            nbformat.write(nb, path)
        return 0
    if args.command == "build-exercises":
        from .grading.build import build_all

        stale = build_all(args.root, check=args.check)
        if args.check and stale:
            print("out of date (run `attn-course build-exercises`): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

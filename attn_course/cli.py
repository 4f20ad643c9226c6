"""The ``attn-course`` command.

    attn-course grade PATH... [--timeout S] [--call-timeout S] [--jobs N] [--json F] [--csv F]
    attn-course build-exercises [--check]
    attn-course strip NOTEBOOK...
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attn-course", description="Tools of the attention-mechanisms course.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade submitted exercise notebooks",
                       description="Run each submitted notebook in its own kernel and score every task. "
                                   "Exit status is 0 whenever grading ran, whatever the scores.")
    g.add_argument("paths", nargs="+", metavar="PATH", help="a submitted notebook, or a folder of them")
    g.add_argument("--timeout", type=_positive(float), default=120.0,
                   help="seconds for running one notebook's cells (default 120)")
    g.add_argument("--call-timeout", type=_positive(float), default=20.0,
                   help="seconds for each graded function's calls (default 20)")
    g.add_argument("--jobs", "-j", type=_positive(int), default=1, help="grade N notebooks at once")
    g.add_argument("--json", metavar="FILE", help="write the report as JSON")
    g.add_argument("--csv", metavar="FILE", help="write the report as CSV (default grade-report.csv "
                                                 "when neither --json nor --csv is given)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")

    s = sub.add_parser("strip", help="remove outputs and execution counts from notebooks, in place")
    s.add_argument("paths", nargs="+", metavar="NOTEBOOK")

    b = sub.add_parser("build-exercises", help="generate learner notebooks from exercises/source/")
    b.add_argument("--root", default=".", help="the course checkout (default: current folder)")
    b.add_argument("--check", action="store_true", help="exit 1 if a learner notebook is out of date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "grade":
        from .grading.report import collect_notebooks, grade_paths, summary, write_reports

        notebooks, missing = collect_notebooks(args.paths)
        if missing:
            print(f"attn-course grade: no such file or folder: {', '.join(missing)}", file=sys.stderr)
            return 2
        if not notebooks:
            print("attn-course grade: no .ipynb files found in " + ", ".join(args.paths), file=sys.stderr)
            return 2
        csv_path = args.csv if (args.csv or args.json) else "grade-report.csv"
        rows = grade_paths(notebooks, timeout=args.timeout, call_timeout=args.call_timeout, jobs=args.jobs,
                           progress=not args.quiet)
        write_reports(rows, args.json, csv_path)
        if not args.quiet:
            print(summary(rows))
            print("report: " + ", ".join(p for p in (args.json, csv_path) if p))
        return 0
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

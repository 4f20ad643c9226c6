"""What the grading sandbox costs: grade N honest copies of a solution with and without it.

    .venv/bin/python benchmarks/grading_sandbox.py [--copies 50] [--jobs 2] [--exercise ex01_softmax_attention]

Each mode is one `attn-course grade` run (a subprocess, as an instructor runs it) over the same
N copies; the table gives the wall time, the time per notebook (wall time / N) and the mean
of each notebook's own time from the progress log, then the ratio sandboxed / unsandboxed,
measured in the same run of this script. Every copy must score full marks in both modes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def grade(folder: Path, sandbox: str, jobs: int, out: Path) -> dict[str, float]:
    report, log = out / f"{sandbox}.json", out / f"{sandbox}.jsonl"
    cmd = [sys.executable, "-m", "attn_course.cli", "grade", "--sandbox", sandbox, "--jobs", str(jobs), "--quiet",
           "--json", str(report), "--log", str(log), "--", str(folder)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=out)
    wall = time.perf_counter() - start
    data = json.loads(report.read_text())
    full = all(t["points"] == t["max_points"] for t in data["totals"].values())
    own = [json.loads(x)["seconds"] for x in log.read_text().splitlines()[1:]]
    return {"wall": wall, "per_nb": wall / len(own), "own": sum(own) / len(own), "full": full}


def sandbox_start(repeat: int) -> tuple[float, float]:
    """Seconds to start `python -c pass` bare and inside the sandbox (best of ``repeat``)."""
    from attn_course.grading.places import release_place
    from attn_course.grading.runner import grading_run
    from attn_course.grading.sandbox import detect

    box = detect("bwrap")
    argv = [sys.executable, "-c", "pass"]
    with grading_run(box) as run:
        place = run.new_place()
        wrapped = box.command(argv, place, run.package, run.binds)
        best = []
        try:
            for cmd in (argv, wrapped):
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    subprocess.run(cmd, check=True)
                    times.append(time.perf_counter() - start)
                best.append(min(times))
        finally:
            release_place(place)
    return best[0], best[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--exercise", default="ex01_softmax_attention")
    args = p.parse_args()
    bare, boxed = sandbox_start(10)
    print(f"start of `python -c pass`: bare {bare * 1e3:.0f} ms, in the sandbox {boxed * 1e3:.0f} ms "
          f"(+{(boxed - bare) * 1e3:.0f} ms per kernel start)")
    if args.copies == 0:
        return
    source = ROOT / "exercises" / "source" / f"{args.exercise}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "uploads"
        folder.mkdir()
        for i in range(args.copies):
            # Copies differ by one byte of metadata, so none is flagged as a duplicate.
            text = source.read_text().replace('"exercise":', f'"copy": {i}, "exercise":', 1)
            (folder / f"student{i:03d}.ipynb").write_text(text)
        results = {mode: grade(folder, mode, args.jobs, tmp_path) for mode in ("none", "bwrap")}
        shutil.rmtree(folder)
    print(f"{args.copies} honest copies of {args.exercise}, --jobs {args.jobs}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}")
    print(f"{'sandbox':8} {'wall s':>8} {'s/notebook':>11} {'own s/nb':>9} {'full marks':>11}")
    for mode, r in results.items():
        print(f"{mode:8} {r['wall']:8.1f} {r['per_nb']:11.2f} {r['own']:9.2f} {str(r['full']):>11}")
    ratio = results["bwrap"]["wall"] / results["none"]["wall"]
    extra = (results["bwrap"]["wall"] - results["none"]["wall"]) / args.copies
    print(f"bwrap / none: {ratio:.2f}x wall time; {extra:+.2f} s per notebook")


if __name__ == "__main__":
    main()

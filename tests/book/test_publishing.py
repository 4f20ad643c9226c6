"""How the book is kept clean, built and deployed: the config files say what CONTRIBUTING.md says."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def workflow(name: str) -> dict:
    flow = yaml.safe_load((WORKFLOWS / name).read_text())
    flow["on"] = flow.pop(True, flow.get("on"))  # YAML 1.1 reads the key `on` as True
    return flow


def steps(flow: dict) -> str:
    return "\n".join(str(step) for job in flow["jobs"].values() for step in job.get("steps", []))


def test_committed_notebooks_are_clean_by_nbstripout():
    pytest.importorskip("nbstripout", reason="nbstripout is in the dev extra")
    notebooks = sorted(str(p) for d in ("chapters", "exercises", "exercises/source") for p in (ROOT / d).glob("*.ipynb"))
    out = subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", "--verify", *notebooks],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"run `pre-commit run nbstripout --all-files` (or `attn-course strip`):\n{out.stdout}"


def test_pre_commit_strips_notebooks_and_runs_ruff():
    hooks = {h["id"]: h for repo in yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"] for h in repo["hooks"]}
    assert "nbstripout" in hooks and "--keep-id" in hooks["nbstripout"].get("args", [])
    assert "ruff" in hooks


def make_n(*args: str) -> list[str]:
    """The commands `make` would run (dry run: nothing runs, nothing is installed)."""
    if not shutil.which("make"):
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.replace("\\\n", " ").splitlines()


def test_builds_treat_warnings_as_errors():
    builds = [c for target in ("book", "test", "linkcheck") for c in make_n(target) if "jupyter-book build" in c]
    assert len(builds) == 3 and all("-W --keep-going" in b for b in builds), builds


def test_make_test_runs_every_notebook_once_then_checks_the_book_built_from_them():
    commands = make_n("test")
    at = {name: [i for i, c in enumerate(commands) if key in c] for name, key in [
        ("config", ".ci/book_config.py"), ("nbmake", "--nbmake"), ("build", "jupyter-book build"),
        ("book_tests", "-m book"), ("apt", "apt-get install"), ("ruff", "ruff check")]}
    assert all(len(v) == 1 for v in at.values()), at  # one of each: the notebooks run once
    assert at["apt"] < at["config"] < at["nbmake"] < at["build"] < at["book_tests"]
    assert "executed-book" in commands[at["build"][0]]
    book_tests = shlex.split(commands[at["book_tests"][0]].split("pytest", 1)[1])
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                *book_tests], capture_output=True, text=True, cwd=ROOT).stdout
    assert "test_browser.py::" in collected and "test_book_html.py::" in collected, collected[-2000:]


def test_the_executed_copy_gets_the_config_with_execution_off(tmp_path):
    """Run the config command `make test` would run, writing to tmp_path: the book's config with
    execution off and every other setting as it is."""
    [command] = [c for c in make_n("test") if ".ci/book_config.py" in c]
    args = shlex.split(command)
    args[3] = str(tmp_path / "_config.yml")  # python book_config.py BASE DEST OVERRIDE
    subprocess.run([sys.executable, *args[1:]], check=True, cwd=ROOT)
    base = yaml.safe_load((ROOT / "_config.yml").read_text())
    executed = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert base["execute"]["execute_notebooks"] != "off" and executed["execute"]["execute_notebooks"] == "off"
    base["execute"]["execute_notebooks"] = "off"
    assert executed == base


def test_a_config_override_that_no_longer_applies_fails(tmp_path):
    out = subprocess.run([sys.executable, ".ci/book_config.py", "_config.yml", str(tmp_path / "c.yml"),
                          "{executing: {execute_notebooks: 'off'}}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "executing" in out.stderr and not (tmp_path / "c.yml").exists()


@pytest.mark.parametrize("target", ["install", "test-fast", "lint"])
def test_only_make_test_and_system_may_run_apt(target):
    assert not [c for c in make_n(target) if "apt-get" in c]


def test_make_lint_needs_only_ruff():
    """Without the course's environment, lint makes a venv of ruff alone: no torch, no install."""
    commands = " ".join(make_n("lint", "BIN=/nonexistent"))
    assert "ruff" in commands and "pip install" in commands
    assert "torch" not in commands and ".[book,dev]" not in commands and "ipykernel" not in commands


def test_book_is_published_from_main():
    flow = workflow("book.yml")
    assert flow["on"]["push"]["branches"] == ["main"]
    text = steps(flow)
    assert "make book" in text and "upload-pages-artifact" in text and "upload-artifact" in text
    assert "_build/html" in text
    assert any("deploy-pages" in str(job) for job in flow["jobs"].values())


def test_pull_requests_run_make_test():
    flow = workflow("test.yml")
    assert "pull_request" in flow["on"]
    assert ".ci/run" in steps(flow) and "make test" in (ROOT / ".ci" / "run").read_text()


def test_version_tags_build_and_check_the_distributions():
    flow = workflow("release.yml")
    assert flow["on"]["push"]["tags"] == ["v*"]
    text = steps(flow)
    assert "python -m build" in text and "twine check" in text


# The papers the course relies on (issue 10): later parts cite them where they are used.
COURSE_PAPERS = [
    "bahdanau2015neural", "luong2015effective", "vaswani2017attention", "devlin2019bert", "radford2019language",
    "dosovitskiy2021image", "carion2020end", "xu2015show", "chan2016listen", "kang2018self", "velickovic2018graph",
    "katharopoulos2020transformers", "beltagy2020longformer", "zaheer2020big", "dao2022flashattention",
    "dao2023flashattention2", "shah2024flashattention3", "kwon2023efficient", "shazeer2019fast", "ainslie2023gqa",
    "su2021roformer", "press2022train", "liu2023ring",
]


def test_one_bib_file_holds_every_paper_the_course_relies_on():
    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    assert len(keys) == len(set(keys)), "duplicate keys in references.bib"
    assert not set(COURSE_PAPERS) - set(keys), sorted(set(COURSE_PAPERS) - set(keys))
    assert list(ROOT.glob("*.bib")) == [ROOT / "references.bib"], "one .bib file"
    assert ":all:" in (ROOT / "bibliography.md").read_text(), "the references page lists every entry"


def test_one_key_per_work_in_the_bibliography():
    """Two keys for the same paper split its citations (and list it twice): one title, one key."""
    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    titles: dict[str, str] = {}
    for key, body in re.findall(r"^@\w+\{([^,]+),(.*?)^\}", bib, re.M | re.S):
        title = re.search(r"^\s*title\s*=\s*\{(.*)\},?\s*$", body, re.M).group(1)
        norm = re.sub(r"[^a-z0-9]", "", title.lower())
        assert norm not in titles, f"references.bib: {key} and {titles[norm]} are the same work ({title})"
        titles[norm] = key


def test_the_bibliography_parses():
    """A syntax error in references.bib stops the book build at its first step; say so here first."""
    pybtex = pytest.importorskip("pybtex.database")
    entries = pybtex.parse_file(str(ROOT / "references.bib")).entries
    assert len(entries) >= 50

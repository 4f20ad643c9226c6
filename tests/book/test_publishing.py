"""How the book is kept clean, built and deployed: the config files say what CONTRIBUTING.md says."""

import re
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


def test_builds_treat_warnings_as_errors():
    makefile = (ROOT / "Makefile").read_text()
    builds = re.findall(r"jupyter-book build .*", makefile)
    assert len(builds) >= 2 and all("$(STRICT)" in b for b in builds), builds
    assert re.search(r"^STRICT := -W --keep-going$", makefile, re.M)
    assert "tests/test_browser.py" in makefile


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

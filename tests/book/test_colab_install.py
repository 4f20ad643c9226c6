"""A notebook's Colab install cell, run for real in a fresh environment that already holds torch.

Colab starts with its own torch (and numpy, matplotlib, ipywidgets...) and no attn_course. The
first code cell of every notebook then runs ``%pip install -q git+<repository>`` when, and only
when, ``google.colab`` is imported. Here: a new virtual environment that sees this
environment's packages the way Colab's image holds its own (through a ``.pth`` line, so nothing
is copied and torch is not installed into it), a kernel running in it, ``google.colab``
pretended, and the install cell pointed at this checkout instead of the repository's URL,
offline (``--no-index``). Then the notebook runs to the end, importing the package just
installed, and torch is still the one it started with.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
NOTEBOOK = ROOT / "chapters" / "04_scores_to_context.ipynb"  # the quickest chapter (a few seconds)

pytestmark = pytest.mark.slow


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """(python, env): a venv without attn_course that sees this environment's torch without holding it."""
    torch = pytest.importorskip("torch")
    setuptools = pytest.importorskip("setuptools")
    # the install builds the package offline, with this environment's setuptools (pyproject asks >=77)
    assert int(setuptools.__version__.split(".")[0]) >= 77, "pip install -e '.[dev]' (it brings setuptools>=77)"
    home = tmp_path_factory.mktemp("colab")
    venv = home / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    host = Path(sysconfig.get_paths()["purelib"])
    assert Path(torch.__file__).is_relative_to(host), "torch must live in this environment's site-packages"
    # The "preinstalled" packages: searched after the venv's own, their .pth files not run (so an
    # editable attn_course of this environment stays invisible).
    (site / "colab_image.pth").write_text(f"{host}\n")
    kernels = venv / "share" / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like)", "language": "python",
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    env |= {"JUPYTER_PATH": str(venv / "share" / "jupyter"), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}
    before = run([str(python), "-c", "import attn_course"], env=env, cwd=home)
    assert before.returncode != 0, "attn_course must not be importable before the install cell runs"
    return python, env, home, site, torch


def source_copy(dest: Path) -> Path:
    """What pip gets from the repository: the package's sources (a build in the checkout would leave build/ there)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "attn_course", dest / "attn_course", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def colab_notebook(path: Path, source: Path) -> nbformat.NotebookNode:
    """The notebook as Colab runs it, installing from a copy of this checkout instead of the repository."""
    nb = nbformat.read(str(path), as_version=4)
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert f"git+{REPO_URL}" in install.source
    install.source = install.source.replace(f"git+{REPO_URL}", f"--no-index --no-build-isolation {source}")
    pretend = nbformat.v4.new_code_cell('import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")')
    report = nbformat.v4.new_code_cell("import attn_course, torch\nprint(attn_course.__file__)\nprint(torch.__file__, torch.__version__)")
    nb.cells = [pretend, *nb.cells, report]
    return nb


def test_install_cell_installs_the_package_and_keeps_torch(colab_like):
    python, env, home, site, torch = colab_like
    nb_path = home / NOTEBOOK.name
    (home / "repository").mkdir()
    source = source_copy(home / "repository")
    nbformat.write(colab_notebook(NOTEBOOK, source), str(nb_path))
    script = (
        "import sys, nbformat\n"
        "from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "NotebookClient(nb, kernel_name='python3', timeout=300, resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
        "print(''.join(o.get('text', '') for o in nb.cells[-1].outputs))\n"
    )
    done = run([str(python), "-c", script, str(nb_path), str(home)], env=env, cwd=home)
    assert done.returncode == 0, f"the notebook failed in the Colab-like environment:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    package_file, torch_line = done.stdout.strip().splitlines()[-2:]
    assert Path(package_file).is_relative_to(site), f"attn_course was not installed into the new environment: {package_file}"
    torch_file, torch_version = torch_line.rsplit(" ", 1)
    assert torch_file == torch.__file__ and torch_version == torch.__version__, "the install replaced torch"
    assert not list(site.glob("torch*")), "torch was installed into the new environment"
    assert not re.search(r"^torch\b", run([str(python), "-m", "pip", "freeze", "--path", str(site)], env=env).stdout, re.M)

from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Plots made by unit tests never open windows. (Not MPLBACKEND: nbmake's kernels inherit the
# environment, and with Agg there they would render no figures for the book.)
matplotlib.use("Agg")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Notebooks and plots: never open windows, whatever the machine.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

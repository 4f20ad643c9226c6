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


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: tiny tensors gain nothing from threads,
    and on a busy CPU extra threads slow them down by an order of magnitude.

    Modules of small-model tests use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    from attn_course.utils import num_threads

    with num_threads(1):
        yield

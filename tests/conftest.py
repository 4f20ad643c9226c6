import os
from pathlib import Path

import matplotlib
import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (and when a kernel is decorated):
# without a GPU, set it before any test module imports triton or attn_course.triton_attention,
# so that the kernel tests run under the interpreter whatever order the modules load in.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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

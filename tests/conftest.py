import os
from pathlib import Path

import matplotlib
import pytest
import torch

from attn_course.grading.kernel_polling import poll_in_slices

# Triton reads TRITON_INTERPRET when it is first imported (and when a kernel is decorated):
# without a GPU, set it before any test module imports triton or attn_course.triton_attention,
# so that the kernel tests run under the interpreter whatever order the modules load in.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent

# nbmake's clients wait for kernel messages in half-second slices: a missed ZeroMQ wake-up then
# costs half a second instead of the whole cell timeout (300 s) (see the module's docstring).
poll_in_slices()

# Plots made by unit tests never open windows. (Not MPLBACKEND: nbmake's kernels inherit the
# environment, and with Agg there they would render no figures for the book.)
matplotlib.use("Agg")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def one_thread(request):
    """One torch thread for every test, restored afterwards: tiny tensors gain nothing from threads,
    and on a busy CPU extra threads slow them down by an order of magnitude.

    A test that measures or restores the thread count says how many it wants:
    ``@pytest.mark.threads(2)``, or ``@pytest.mark.threads(None)`` to leave torch's setting as it is.
    """
    from attn_course.utils import num_threads

    marker = request.node.get_closest_marker("threads")
    with num_threads(marker.args[0] if marker else 1, name="the threads marker's argument"):
        yield

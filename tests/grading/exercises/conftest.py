import pytest

from attn_course.check import Checker


@pytest.fixture
def check(request):
    """The in-notebook checker, as a learner calls it, of the exercise the test module is named after
    (test_ex04_decoder_step.py: ``Checker("ex04_decoder_step")``)."""
    return Checker(request.module.__name__.rpartition(".")[2].removeprefix("test_"))

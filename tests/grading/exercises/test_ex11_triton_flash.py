"""Exercise 11 (a FlashAttention kernel in Triton): the references match the library, the
solution's kernel passes under Triton's interpreter, and wrong kernels or a torch launcher lose
their points with a message that says what was wrong (the rule, or the case's diagnosis).

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; the wrong submissions through the sandbox in
tests/grading/test_wrong_submissions.py.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernels run on the CPU

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.exercises.ex11_triton_flash import EXERCISE  # noqa: E402
from attn_course.flash import block_partial, naive_attention  # noqa: E402

pytest.importorskip("triton")
SOURCE = Path(__file__).resolve().parents[3] / "exercises" / "source" / "ex11_triton_flash.ipynb"


def _solution(folder: Path, **bent: tuple[str, str]) -> dict:
    """The source notebook's code cells (checks left out) run in a fresh namespace, each ``bent``
    pair ``(old, new)`` replacing text in them; the code is written to a file in ``folder`` first
    (triton reads a kernel's source from its file)."""
    cells = json.loads(SOURCE.read_text(encoding="utf-8"))["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.split("\n") if not line.startswith(("check(", "get_ipython")))
    for old, new in bent.values():
        assert old in code, old
        code = code.replace(old, new)
    path = folder / "ex11_solution.py"
    path.write_text(code)
    ns: dict = {"__name__": "__main__"}
    exec(compile(code, str(path), "exec"), ns)
    return ns


def test_references_match_the_library():
    g = torch.Generator().manual_seed(0)
    for causal in (False, True):
        q, k, v = (torch.randn(1, 2, 20, 16, generator=g) for _ in range(3))
        out = EXERCISE.task("flash_forward").reference(q, k, v, causal, 16, 16)
        torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal))
        mask = torch.ones(20, 20, dtype=torch.bool).tril() if causal else None
        m, l, _ = block_partial(q, k, v, mask=mask)
        lse = EXERCISE.task("flash_lse").reference(q, k, v, causal, 16, 16)
        torch.testing.assert_close(lse, m + l.log())


def test_the_solution_kernel_passes(check, tmp_path):
    ns = _solution(tmp_path)
    assert check("flash_forward", ns["flash_forward"], quiet=True).passed
    assert check("flash_lse", ns["flash_lse"], quiet=True).passed


def test_an_unmasked_partial_block_fails_with_the_diagnosis(check, tmp_path):
    ns = _solution(tmp_path, mask=("keep = col_ok[None, :]", "keep = offs_n[None, :] >= 0"))
    result = check("flash_forward", ns["flash_forward"], quiet=True)
    assert result.points == 0 and "partial" in result.message
    assert EXERCISE.task("flash_forward").hint not in result.message  # the task's hint only on request


def test_lse_without_the_max_fails(check, tmp_path):
    ns = _solution(tmp_path, lse=("m_i + tl.log(l_i)", "tl.log(l_i)"))
    assert check("flash_lse", ns["flash_lse"], quiet=True).points == 0


def test_attention_in_torch_breaks_the_rule(check):
    def flash_forward(q, k, v, causal, block_m, block_n):
        s = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
        if causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
        p = (s - s.amax(-1, keepdim=True)).exp()
        return (p / p.sum(-1, keepdim=True)) @ v

    result = check("flash_forward", flash_forward, quiet=True)
    assert result.points == 0 and "no torch matrix product" in result.message


def test_the_task_hint_comes_on_request(check):
    assert check.hint("flash_lse") == EXERCISE.task("flash_lse").hint

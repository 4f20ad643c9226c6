"""Judge a learner's function against the reference, case by case.

``evaluate(task, call)`` is shared by the in-notebook checker and the grader; they differ
only in ``call``: the checker calls the function in its own process, the grader asks the
submission's kernel to call it and reads back the values (``runner``). Everything that
decides a score happens here, in the caller's process.
"""

from __future__ import annotations

import hashlib
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import fmt_shape
from .codec import Opaque
from .fixtures import MARKER as FIXTURE
from .fixtures import is_fixture
from .fixtures import resolve as resolve_fixtures
from .tasks import Case, Task, partial_points

# A public seed: the default of ``evaluate`` for tests and tools. The grader never uses it: it
# draws a secret seed per run (``runner.grading_run``), since inputs from a public seed can be
# answered from a table computed offline.
GRADING_SEED = 20261125

_MT_WORDS = 624  # mt19937's state: 624 32-bit words
_MT_OFFSET = 24  # in torch's CPU generator state: seed (8 bytes), left, seeded (4 + 4), next (8), then the words


def _mt_init(seed32: int) -> list[int]:
    words = [seed32]
    for i in range(1, _MT_WORDS):
        words.append((1812433253 * (words[-1] ^ (words[-1] >> 30)) + i) & 0xFFFFFFFF)
    return words


def case_generator(seed: int) -> torch.Generator:
    """A CPU generator whose stream depends on every bit of ``seed``.

    ``torch.Generator().manual_seed(s)`` keeps ``s`` whole as ``initial_seed()`` but seeds its
    mt19937 with the low 32 bits only: seeds differing above bit 31 draw the same cases. Here
    the 624 state words are filled from a hash of the whole seed instead. Where torch's state
    layout is not the one this expects, it warns and falls back to ``manual_seed``.
    """
    g = torch.Generator().manual_seed(seed)
    state = bytearray(g.get_state().numpy().tobytes())
    stored = struct.unpack_from(f"<{_MT_WORDS}Q", state, _MT_OFFSET) if len(state) >= _MT_OFFSET + 8 * _MT_WORDS else ()
    if list(stored) != _mt_init(seed & 0xFFFFFFFF):
        warnings.warn("unknown torch generator layout: the cases depend on the low 32 bits of the seed only",
                      RuntimeWarning, stacklevel=2)
        return g
    raw = hashlib.shake_256(b"attn-course cases\0" + str(seed).encode()).digest(4 * _MT_WORDS)
    words = struct.unpack(f"<{_MT_WORDS}I", raw)
    struct.pack_into(f"<{_MT_WORDS}Q", state, _MT_OFFSET, *words)
    g.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return g


@dataclass
class Outcome:
    """What one call of the learner's function gave."""

    ok: bool
    output: Any = None
    args_after: tuple[Any, ...] | None = None  # the inputs as they were after the call
    kwargs_after: dict[str, Any] | None = None
    error_type: str = ""
    error_message: str = ""
    error_where: str = ""  # "line 4 in softmax: return e / e.sum()"
    timed_out: bool = False
    seconds: float = 0.0
    forbidden_used: str = ""  # the name of a forbidden function it called, if any
    rule_broken: str = ""  # what it did against a rule of the case (``rules``), if anything


@dataclass
class TaskResult:
    task: str
    points: float
    max_points: int
    status: str  # passed | failed | error | not_implemented | missing | timeout
    message: str
    cases_passed: int = 0
    cases_total: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def describe_value(v: Any) -> str:
    if is_fixture(v):
        return str(v[FIXTURE])  # e.g. "table_lm": an object the grader builds in the kernel
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')} {fmt_shape(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"{type(v).__name__} of {len(v)}"
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (int, float, bool)) or v is None:
        return repr(v)
    return type(v).__name__


def describe_case(task: Task, case: Case) -> str:
    names = list(task.arg_names) + [f"arg{i}" for i in range(len(task.arg_names), len(case.args))]
    parts = [f"{n}: {describe_value(a)}" for n, a in zip(names, case.args)]
    parts += [f"{k}={describe_value(v)}" for k, v in case.kwargs.items()]
    return f"case '{case.name}' ({', '.join(parts)})"


def clone_inputs(value: Any) -> Any:
    """A deep copy of case inputs (tensors cloned) so nobody's call can touch the originals."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(clone_inputs(v) for v in value)
    if isinstance(value, list):
        return [clone_inputs(v) for v in value]
    if isinstance(value, dict):
        return {k: clone_inputs(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Exact equality (NaN equal to NaN), used to detect in-place mutation."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))
        )
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)


def compare_values(expected: Any, got: Any, rtol: float, atol: float, where: str = "the result") -> str | None:
    """``None`` when ``got`` matches ``expected``; else a one-line description of the first difference."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            kind = "a numpy array" if type(got).__name__ == "ndarray" else describe_value(got) if not isinstance(got, Opaque) else repr(got)
            return f"{where} should be a torch.Tensor, got {kind}"
        if got.shape != expected.shape:
            return f"{where} has shape {fmt_shape(got.shape)}; expected {fmt_shape(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"{where} has dtype {got.dtype}; expected {expected.dtype}"
        if got.is_complex() or not got.is_floating_point():
            if torch.equal(got, expected):
                return None
            idx = tuple(int(i) for i in (got != expected).nonzero()[0])
            return f"{where} differs at index {idx}: expected {expected[idx].item()}, got {got[idx].item()}"
        g, e = got.double(), expected.double()
        bad_finite = ~torch.isfinite(g) & torch.isfinite(e)
        if bad_finite.any():
            n = int(bad_finite.sum())
            idx = tuple(int(i) for i in bad_finite.nonzero()[0])
            what = "NaN" if torch.isnan(g[idx]) else "inf"
            return (
                f"{where} contains NaN or inf at {n} of {g.numel()} positions (first: {what} at index {idx}, "
                f"expected {e[idx].item():.6g})"
            )
        close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if not bool(close.all()):
            err = torch.where(close, torch.zeros_like(g), (g - e).abs().nan_to_num(nan=math.inf))
            flat = int(err.argmax())
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape)) if g.dim() else ()
            n = int((~close).sum())
            return (
                f"{where} has wrong values at {n} of {g.numel()} positions (largest error at index {idx}: "
                f"expected {e[idx].item():.6g}, got {g[idx].item():.6g})"
            )
        return None
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)):
            return f"{where} should be a tuple of {len(expected)}, got {describe_value(got) if not isinstance(got, Opaque) else repr(got)}"
        if len(got) != len(expected):
            return f"{where} should be a tuple of {len(expected)} values, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            msg = compare_values(e, g, rtol, atol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"{where} should be a number, got {describe_value(got)}"
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return f"{where} is {got:.6g}; expected {expected:.6g}"
        return None
    return None if _same(expected, got) else f"{where} is {describe_value(got)}; expected {describe_value(expected)}"


def judge(task: Task, case: Case, expected: Any, outcome: Outcome) -> tuple[str, str | None]:
    """(status, problem) for one case; problem is None when the case passes."""
    if outcome.timed_out:
        return "timeout", f"did not finish in time on {describe_case(task, case)} (an infinite loop?)"
    if not outcome.ok:
        if outcome.error_type == "NotImplementedError":
            return "not_implemented", "not implemented yet: replace `raise NotImplementedError` with your code"
        where = f" ({outcome.error_where})" if outcome.error_where else ""
        return "error", f"raised {outcome.error_type}: {outcome.error_message}{where} on {describe_case(task, case)}"
    if outcome.forbidden_used:
        return "failed", (f"calls `{outcome.forbidden_used}`, which this task asks you to write yourself "
                          f"(on {describe_case(task, case)})")
    if outcome.args_after is not None:
        names = list(task.arg_names) + [f"arg{i}" for i in range(len(task.arg_names), len(case.args))]
        for n, before, after in zip(names, case.args, outcome.args_after):
            if not _same(before, after):
                return "failed", f"changed its input `{n}` in place on {describe_case(task, case)}; leave inputs untouched (use out-of-place operations)"
    if outcome.kwargs_after is not None:
        for k, before in case.kwargs.items():
            if not _same(before, outcome.kwargs_after.get(k)):
                return "failed", f"changed its input `{k}` in place on {describe_case(task, case)}"
    problem = compare_values(expected, outcome.output, task.rtol, task.atol)
    if problem:
        return "failed", f"{problem} on {describe_case(task, case)}"
    if outcome.rule_broken:
        return "failed", f"right values, but it {outcome.rule_broken} on {describe_case(task, case)}"
    return "passed", None


def expected_outputs(task: Task, cases: list[Case]) -> list[Any]:
    if task.driver:
        from .drivers import DRIVERS

        run = DRIVERS[task.driver]
        return [run(task.reference, *resolve_fixtures(clone_inputs(c.args)), **resolve_fixtures(clone_inputs(c.kwargs)))
                for c in cases]
    return [task.reference(*resolve_fixtures(clone_inputs(c.args)), **resolve_fixtures(clone_inputs(c.kwargs)))
            for c in cases]


def evaluate(task: Task, call: Callable[[list[Case]], list[Outcome]], seed: int = GRADING_SEED) -> TaskResult:
    """Run every case of ``task`` through ``call`` and score the task (all-or-nothing).

    ``call`` receives all cases at once (the grader sends them to the kernel in one round
    trip) and returns one Outcome per case; it may return fewer when it gave up (timeout,
    dead kernel): missing outcomes count as failures of the last one.
    """
    cases = task.cases(case_generator(seed))
    expected = expected_outputs(task, cases)
    outcomes = call(cases)
    failures: list[str] = []
    status = "passed"
    hints: list[str] = []
    passed = 0
    passed_flags: list[bool] = []
    for i, case in enumerate(cases):
        if i >= len(outcomes):
            break
        case_status, problem = judge(task, case, expected[i], outcomes[i])
        passed_flags.append(problem is None)
        if problem is None:
            passed += 1
            continue
        if status == "passed":
            status = case_status
            if case.hint and case_status not in ("not_implemented", "timeout"):  # no mistake of this case to diagnose
                hints.append(case.hint)
        failures.append(problem)
        if case_status in ("not_implemented", "timeout"):
            break  # no point trying the other cases
    if len(outcomes) < len(cases) and status == "passed":
        status = "error"
        failures.append("the notebook stopped answering before all cases ran")
    if status == "passed":
        return TaskResult(task.name, float(task.points), task.points, "passed", f"passed all {len(cases)} cases", passed, len(cases))
    msg = failures[0]
    if status not in ("not_implemented", "timeout"):
        msg += f" [{passed} of {len(cases)} cases passed]"
    earned = partial_points(cases, passed_flags) if task.partial_credit else 0.0
    if earned:
        msg += f" [{earned:g} of {task.points} points]"
    hint = " ".join(h for h in hints if h)
    if hint:
        msg += f" Hint: {hint}"
    return TaskResult(task.name, earned, task.points, status, msg, passed, len(cases), failures)

"""Fixture markers (objects built on the kernel side) and partial credit, without a kernel."""

import pytest
import torch

from attn_course.grading.compare import evaluate
from attn_course.grading.fixtures import MARKER, TableLM, fixture, is_fixture, resolve
from attn_course.grading.harness import call_local
from attn_course.grading.tasks import Case, Task, partial_points


def test_a_marker_is_plain_data_that_survives_the_safe_loader(tmp_path):
    marker = fixture("table_lm", table=torch.zeros(3, 3), mix=torch.ones(3, 3), pos=torch.zeros(4, 3))
    torch.save({"cases": [{"args": [marker, torch.ones(2)]}]}, tmp_path / "in.pt")
    back = torch.load(tmp_path / "in.pt", weights_only=True)["cases"][0]["args"][0]
    assert is_fixture(back) and back[MARKER] == "table_lm"
    assert isinstance(resolve(back), TableLM)


def test_resolve_keeps_containers_without_markers_and_never_copies_tensors():
    x = torch.ones(2)
    args = (x, [x, 3], {"a": x})
    assert resolve(args) is args
    out = resolve((x, fixture("planted_attention", diagonal=0, scale_power=1, split=0, loop=1)))
    assert out[0] is x and callable(out[1]) and out[1].__name__ == "attention"


def test_unknown_fixture_is_refused():
    with pytest.raises(ValueError, match="unknown fixture 'os.system'"):
        fixture("os.system")
    with pytest.raises(KeyError):
        resolve({MARKER: "os.system"})


def test_call_local_hands_the_object_and_reports_the_marker_as_the_input():
    marker = fixture("planted_attention", diagonal=0, scale_power=1, split=0, loop=1)
    q = torch.randn(1, 3, 4)
    outcome = call_local(lambda attention, q: attention(q, q, q)[0], Case("c", (marker, q)))
    assert outcome.ok and outcome.output.shape == (1, 3, 4)
    assert outcome.args_after[0] == marker  # unchanged input: no "changed its input in place"


def test_table_lm_is_causal_and_rowwise():
    g = torch.Generator().manual_seed(0)
    lm = TableLM(torch.randn(5, 5, generator=g), torch.randn(5, 5, generator=g), torch.randn(6, 5, generator=g))
    tokens = torch.randint(0, 5, (3, 6), generator=g)
    logits = lm(tokens)
    assert logits.shape == (3, 6, 5)
    changed = tokens.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 5
    assert torch.equal(lm(changed)[:, :4], logits[:, :4])
    assert torch.equal(lm(tokens[1:2]), logits[1:2])
    with pytest.raises(ValueError, match="max_len = 6"):
        lm(torch.zeros(1, 7, dtype=torch.long))


@pytest.mark.parametrize("passed, points", [
    ([True, True, True, True], 4.0),
    ([True, True, False, True], 3.0),
    ([False, True, True, True], 0.0),  # a required case failed
    ([True, False, False, False], 0.0),  # only the gate passed: nothing it gates was earned
    ([True, True], 2.0),  # cases not run count as failed
])
def test_partial_points(passed, points):
    cases = [Case("gate", (), points=1, required=True)] + [Case(f"c{i}", (), points=1) for i in range(3)]
    assert partial_points(cases, passed) == points


def test_evaluate_gives_partial_credit_with_the_first_failure_and_its_hint():
    def cases(g):
        return [Case("zero", (0,), points=1, required=True), Case("one", (1,), points=1),
                Case("two", (2,), points=2, hint="two is special")]

    task = Task("double", lambda x: 2 * x, cases, points=4, partial_credit=True, arg_names=("x",))
    result = evaluate(task, lambda cs: [call_local(lambda x: 2 * x if x < 2 else 0, c) for c in cs])
    assert result.points == 2.0 and result.status == "failed"
    assert "case 'two'" in result.message and "[2 of 4 points]" in result.message and "two is special" in result.message
    all_or_nothing = Task("double", lambda x: 2 * x, cases, points=4)
    assert evaluate(all_or_nothing, lambda cs: [call_local(lambda x: 2 * x if x < 2 else 0, c) for c in cs]).points == 0

"""The grader's reading of the submitted source: every known way around the kernel's profile watch
is flagged from the text, and no reference solution is."""

import dataclasses
import time
from pathlib import Path

import nbformat
import pytest

from attn_course.grading.catalog import load_exercises
from attn_course.grading.source_check import forbidden_in_source

EXERCISES = load_exercises()
EX01 = EXERCISES["ex01_softmax_attention"]
SOFTMAX, ATTEND = EX01.task("softmax"), EX01.task("attend")
SOURCE = Path(__file__).resolve().parents[2] / "exercises" / "source"

SETUP = "import math\nimport functools\nimport torch\nimport torch.nn.functional as F\nfrom attn_course.check import Checker\n"
HONEST_SOFTMAX = ("def softmax(scores):\n    shifted = scores - scores.amax(-1, keepdim=True)\n"
                  "    e = shifted.exp()\n    return e / e.sum(-1, keepdim=True)\n")

SOFTMAX_CHEATS = {
    "torch.softmax": "def softmax(x):\n    return torch.softmax(x, -1)\n",
    "method": "def softmax(x):\n    return x.softmax(-1)\n",
    "F alias": "def softmax(x):\n    return F.softmax(x, dim=-1)\n",
    "from import as": "from torch import softmax as s\ndef softmax(x):\n    return s(x, -1)\n",
    "partial": "sm = functools.partial(torch.softmax, dim=-1)\ndef softmax(x):\n    return sm(x)\n",
    "partial inside": "def softmax(x):\n    return functools.partial(torch.softmax, dim=-1)(x)\n",
    "map": "def softmax(x):\n    return torch.stack(list(map(torch.softmax, x, [-1] * len(x))))\n",
    "thread": ("import threading\ndef softmax(x):\n    out = []\n"
               "    t = threading.Thread(target=lambda: out.append(torch.softmax(x, -1)))\n"
               "    t.start(); t.join()\n    return out[0]\n"),
    "torch.ops": "def softmax(x):\n    return torch.ops.aten._softmax(x, -1, False)\n",
    "torch._C": "def softmax(x):\n    return torch._C._nn.gelu(x)\n",
    "log_softmax exp": "def softmax(x):\n    return x.log_softmax(-1).exp()\n",
    "nn.Softmax": "def softmax(x):\n    return torch.nn.Softmax(dim=-1)(x)\n",
    "softmin": "def softmax(x):\n    return F.softmin(-x, dim=-1)\n",
    "getattr const": "def softmax(x):\n    return getattr(torch, 'softmax')(x, -1)\n",
    "getattr computed": "def softmax(x):\n    return getattr(torch, 'soft' + 'max')(x, -1)\n",
    "__getattribute__": "def softmax(x):\n    return torch.__getattribute__('soft' + 'max')(x, -1)\n",
    "__dict__": "def softmax(x):\n    return torch.__dict__['soft' + 'max'](x, -1)\n",
    "importlib": "import importlib\ndef softmax(x):\n    return importlib.import_module('torch').exp(x)\n",
    "__import__": "def softmax(x):\n    return __import__('torch').exp(x)\n",
    "eval": "def softmax(x):\n    return eval('torch.soft' + 'max')(x, -1)\n",
    "exec": "def softmax(x):\n    exec('pass')\n    return x\n",
    "globals": "def softmax(x):\n    return globals()['torch'].exp(x)\n",
    "vars": "def softmax(x):\n    return vars(torch)['exp'](x)\n",
    "sys.modules": "import sys\ndef softmax(x):\n    return sys.modules['torch'].exp(x)\n",
    "__builtins__": "def softmax(x):\n    return __builtins__.eval('x')\n",
    "helper def": "def helper(x):\n    return torch.softmax(x, -1)\ndef softmax(x):\n    return helper(x)\n",
    "lambda": "h = lambda x: F.softmax(x, -1)\ndef softmax(x):\n    return h(x)\n",
    "class method": ("class S:\n    def run(self, x):\n        return x.softmax(-1)\n"
                     "def softmax(x):\n    return S().run(x)\n"),
    "local import": "def softmax(x):\n    from torch.nn.functional import softmax as s\n    return s(x, -1)\n",
    "course": "from attn_course.masking import masked_softmax\ndef softmax(x):\n    return masked_softmax(x)\n",
    "course module": "import attn_course.masking as m\ndef softmax(x):\n    return m.masked_softmax(x)\n",
    "distributions": "def softmax(x):\n    return torch.distributions.Categorical(logits=x).probs\n",
    "star import": "from torch.nn.functional import *\ndef softmax(x):\n    return log_softmax(x, -1).exp()\n",
    "globals write": "globals()['sm'] = torch.softmax\ndef softmax(x):\n    return sm(x, -1)\n",
    "code swap": "def cheat(x):\n    return torch.softmax(x, -1)\n" + HONEST_SOFTMAX + "softmax.__code__ = cheat.__code__\n",
    "methodcaller": "import operator\ndef softmax(x):\n    return operator.methodcaller('softmax', -1)(x)\n",
    "hidden by IPython syntax": HONEST_SOFTMAX + "#\n",  # + a later unparsable cell, below
}

ATTEND_CHEATS = {
    "F.sdpa": "def attend(q, k, v):\n    return F.scaled_dot_product_attention(q, k, v), None\n",
    "partial": ("sdpa = functools.partial(F.scaled_dot_product_attention, dropout_p=0.0)\n"
                "def attend(q, k, v):\n    return sdpa(q, k, v), None\n"),
    "MultiheadAttention": "def attend(q, k, v):\n    return torch.nn.MultiheadAttention(4, 1)(q, k, v)\n",
    "mha forward": "def attend(q, k, v):\n    return F.multi_head_attention_forward(q, k, v)\n",
    "course": ("from attn_course.attention import scaled_dot_product_attention as a\n"
               "def attend(q, k, v):\n    return a(q, k, v)\n"),
    "torch.ops": "def attend(q, k, v):\n    return torch.ops.aten._scaled_dot_product_attention_math(q, k, v)\n",
    "eval": "def attend(q, k, v):\n    return eval('F.scaled_dot_product_attention')(q, k, v), None\n",
    "map": "def attend(q, k, v):\n    return list(map(F.scaled_dot_product_attention, [q], [k], [v]))[0], None\n",
}


def cells(code):
    out = [SETUP, code]
    if code.endswith("#\n"):
        out.append("softmax = torch.softmax\nx = %time 1\n")  # IPython runs it; ast cannot parse it
    return out


@pytest.mark.parametrize("code", SOFTMAX_CHEATS.values(), ids=SOFTMAX_CHEATS)
def test_every_softmax_cheat_is_flagged(code):
    why = forbidden_in_source(cells(code), SOFTMAX)
    assert why and why.startswith("`softmax` uses"), why


@pytest.mark.parametrize("code", ATTEND_CHEATS.values(), ids=ATTEND_CHEATS)
def test_every_attend_cheat_is_flagged(code):
    why = forbidden_in_source(cells(code), ATTEND)
    assert why and why.startswith("`attend` uses"), why


def test_the_message_names_the_rule_and_the_route():
    why = forbidden_in_source(cells(SOFTMAX_CHEATS["partial"]), SOFTMAX)
    assert why == ("`softmax` uses `torch.softmax` (through `functools.partial`), "
                   "which this task asks you to write yourself")
    assert "cannot check" in forbidden_in_source(cells(SOFTMAX_CHEATS["eval"]), SOFTMAX)
    assert "equivalent of `softmax`" in forbidden_in_source(cells(SOFTMAX_CHEATS["nn.Softmax"]), SOFTMAX)
    assert "uses `torch.nn.functional.softmax`" in forbidden_in_source(cells(SOFTMAX_CHEATS["F alias"]), SOFTMAX)
    dot = EX01.task("dot_scores")
    code = "from attn_course.attention import context_vector\ndef dot_scores(q, k):\n    return context_vector(q, k)\n"
    assert forbidden_in_source([SETUP, code], dot) == ("`dot_scores` uses `attn_course.attention.context_vector`; "
                                                       "this task allows only `attn_course.check` from the course package")
    assert "equivalent of `softmax`" in forbidden_in_source(cells(SOFTMAX_CHEATS["log_softmax exp"]), SOFTMAX)


def test_a_learners_own_softmax_may_be_used_by_attend():
    code = HONEST_SOFTMAX + ("def attend(q, k, v):\n    w = softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))\n"
                             "    return w @ v, w\n")
    demo = "x = torch.randn(3, 4)\nassert torch.allclose(softmax(x), torch.softmax(x, -1))\n%timeit softmax(x)\n"
    assert forbidden_in_source([SETUP, code, demo], ATTEND) is None
    assert forbidden_in_source([SETUP, code, demo], SOFTMAX) is None
    # attend may use torch's softmax: only SDPA is forbidden there
    assert forbidden_in_source([SETUP, code.replace("softmax(q", "torch.softmax(-1, q")], ATTEND) is None


def test_the_last_def_wins_and_a_task_without_forbidden_names_is_never_flagged():
    cheat = SOFTMAX_CHEATS["torch.softmax"]
    assert forbidden_in_source([SETUP, cheat, HONEST_SOFTMAX], SOFTMAX) is None
    assert forbidden_in_source([SETUP, HONEST_SOFTMAX, cheat], SOFTMAX)
    # every exercise task now forbids something: a copy of one without its forbidden names
    gat = dataclasses.replace(EXERCISES["ex07_attention_across_fields"].task("gat_coefficient"), forbidden=())
    assert forbidden_in_source([SETUP, "def gat_coefficient(x):\n    return eval('x')\n"], gat) is None
    assert "no `def softmax`" in forbidden_in_source([SETUP], SOFTMAX)


def test_reading_a_planted_function_instead_of_testing_it_is_flagged():
    task = EXERCISES["ex06_find_the_bug"].task("leakage_test")
    code = "def leakage_test(attention):\n    return attention.__closure__[0].cell_contents[0] == 0\n"
    assert "cell_contents`, which the grader cannot check" in forbidden_in_source([SETUP, code], task)


def _solution_cells(path):
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", sorted(SOURCE.glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_reference_solution_is_flagged(path):
    ex = EXERCISES[path.stem]
    sources = _solution_cells(path)
    assert {t.name: forbidden_in_source(sources, t) for t in ex.tasks} == {t.name: None for t in ex.tasks}


@pytest.mark.parametrize("big", [
    "\n" * 450_000 + HONEST_SOFTMAX,
    "x = 1\n" * 450_000 + HONEST_SOFTMAX,  # over the token cap: refused without parsing
    "#" + "a" * 2_000_000 + "\n" + HONEST_SOFTMAX,  # a 2 MB cell under both caps
    "s = '" + "a" * 2_100_000 + "'\n" + HONEST_SOFTMAX,  # over 2 MiB
    "(" * 100_000 + HONEST_SOFTMAX,
    "x = " + "a." * 40_000 + "b\n" + HONEST_SOFTMAX,
])
def test_huge_or_hostile_cells_finish_fast(big):
    start = time.perf_counter()
    why = forbidden_in_source([SETUP, big], SOFTMAX)
    assert time.perf_counter() - start < 1.0
    assert why is None or "too large" in why or "no `def softmax`" in why


def test_over_the_caps_is_refused_not_skipped():
    assert "too large" in forbidden_in_source([SETUP, "x = 1\n" * 450_000 + HONEST_SOFTMAX], SOFTMAX)
    assert "too large" in forbidden_in_source([SETUP, "s = '" + "a" * 2_100_000 + "'\n" + HONEST_SOFTMAX], SOFTMAX)

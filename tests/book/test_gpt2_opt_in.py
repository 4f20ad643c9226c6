"""Chapter 17's one download: GPT-2 small, in Colab only, and only when the reader sets LOAD_REAL_GPT2.

The cell runs here as the page runs it, with ``from_pretrained`` replaced by a tiny random GPT-2
(nothing is downloaded): offline or with the flag off it must not call ``from_pretrained``; in
(pretend) Colab with the flag on it must load what ``from_pretrained`` returns through
``load_gpt2_state_dict``.
"""

import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = ROOT / "chapters" / "17_loading_gpt2.ipynb"
GUARD = 'if "google.colab" in sys.modules and LOAD_REAL_GPT2:'


def cells():
    return [c.source for c in nbformat.read(str(CHAPTER), as_version=4).cells if c.cell_type == "code"]


def opt_in_cell() -> str:
    found = [s for s in cells() if "from_pretrained(" in s]
    assert len(found) == 1, "exactly one cell of chapter 17 may call from_pretrained"
    return found[0]


def test_the_download_is_opt_in_and_colab_only():
    cell = opt_in_cell()
    assert "LOAD_REAL_GPT2 = False" in cell, "the download is off by default"
    guarded = cell.split(GUARD, 1)
    assert len(guarded) == 2 and "from_pretrained" not in guarded[0], "from_pretrained only under the guard"
    body = guarded[1].split("\nelif ", 1)[0].split("\nelse", 1)[0]
    assert body.count("from_pretrained(") == cell.count("from_pretrained(")
    assert 'GPT2LMHeadModel.from_pretrained("gpt2")' in body and "load_gpt2_state_dict(" in body


@pytest.fixture
def run_cell(monkeypatch):
    """Run the opt-in cell after the page's imports, with from_pretrained counting its calls."""
    transformers = pytest.importorskip("transformers")
    import torch

    from attn_course.labs import gpt2_weights

    torch.manual_seed(0)
    tiny = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32,
                                                                n_layer=1, n_head=2))
    calls = []

    def fake(cls, name, *args, **kwargs):
        calls.append((cls.__name__, name))
        return tiny if cls is transformers.GPT2LMHeadModel else "a tokenizer"

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", classmethod(fake))
    monkeypatch.setattr(transformers.GPT2TokenizerFast, "from_pretrained", classmethod(fake))
    monkeypatch.setattr(gpt2_weights, "_hub_cache_file", lambda repo, name: None)  # an empty HF cache
    monkeypatch.delenv(gpt2_weights.ENV_VAR, raising=False)
    imports = next(s for s in cells() if "from attn_course.gpt import" in s)

    def run(colab: bool, flag: bool) -> dict:
        if colab:
            monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        ns: dict = {}
        exec(compile(imports, "imports", "exec"), ns)
        exec(compile(opt_in_cell().replace("LOAD_REAL_GPT2 = False", f"LOAD_REAL_GPT2 = {flag}"), "opt-in", "exec"), ns)
        return ns

    threads = torch.get_num_threads()
    yield run, calls, tiny
    torch.set_num_threads(threads)


def test_offline_or_without_the_flag_nothing_is_downloaded(run_cell, capsys):
    run, calls, _ = run_cell
    for colab, flag in ((False, False), (False, True), (True, False)):
        ns = run(colab, flag)
        assert ns["gpt2"] is None and not calls
        out = capsys.readouterr().out
        assert "Skipping the real GPT-2 here" in out and "LOAD_REAL_GPT2 = True" in out


def test_in_colab_with_the_flag_it_loads_what_from_pretrained_returns(run_cell):
    import torch

    run, calls, tiny = run_cell
    ns = run(True, True)
    assert [name for _, name in calls] == ["gpt2", "gpt2"] and calls[0][0] == "GPT2LMHeadModel"
    assert calls[1][0].startswith("GPT2Tokenizer")  # transformers 5 names the fast one GPT2Tokenizer
    assert ns["hf_gpt2"] is tiny and ns["tokenizer"] == "a tokenizer"
    idx = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        assert (ns["gpt2"](idx) - tiny(idx).logits).abs().max() <= 1e-5

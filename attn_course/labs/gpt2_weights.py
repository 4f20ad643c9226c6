"""Part IV lab (loading GPT-2): find pretrained GPT-2 weights on this machine, never download them.

The chapter runs the real GPT-2 when its weights are already here: in the Hugging Face cache
(after the reader downloaded them), or in a folder the reader names. Nothing here downloads;
the chapter's one download is an opt-in cell for Colab (``LOAD_REAL_GPT2 = True``), and
``HOW_TO_GET_GPT2`` says how to get the weights otherwise.

* ``find_gpt2_weights``    the path of a local ``model.safetensors`` / ``pytorch_model.bin``, or ``None``.
* ``load_gpt2_weights``    that file -> ``attn_course.gpt.GPT`` (via ``load_gpt2_state_dict``).
* ``find_gpt2_tokenizer``  a GPT-2 tokenizer from local files only, or ``None``.
* ``hf_state_dict``        our ``GPT``'s weights under Hugging Face's names and layout (the inverse
                           of the loader: for tests, and to build a transformers model from ours).
* ``block_outputs``        each block's output in our ``GPT`` and in a ``transformers`` GPT-2, side by
                           side: how to find the first layer where a loader went wrong.
* ``draw_block_comparison``  one frame of the chapter's slider: the differences block by block
                           for two loaders, and one block's values, ours against theirs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from attn_course.gpt import GPT, GPTConfig, load_gpt2_state_dict

__all__ = ["ENV_VAR", "WEIGHT_FILES", "HOW_TO_GET_GPT2", "find_gpt2_weights", "load_gpt2_weights",
           "find_gpt2_tokenizer", "hf_state_dict", "block_outputs", "draw_block_comparison"]

ENV_VAR = "ATTN_COURSE_GPT2"  # a folder holding GPT-2's weight file (and tokenizer files)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

HOW_TO_GET_GPT2 = f"""\
GPT-2's weights (about 550 MB) are not on this machine, so the cells that need them are skipped;
the page never downloads anything unless you ask it to. To run them:

  * in Colab: set LOAD_REAL_GPT2 = True in the cell that printed this and run it again: it
    downloads GPT-2 with transformers' GPT2LMHeadModel.from_pretrained("gpt2");
  * anywhere with internet access and `transformers` installed, fill the Hugging Face cache
    once (the page looks there), then run the page again:
        from huggingface_hub import snapshot_download
        snapshot_download("gpt2", allow_patterns=["*.json", "*.txt", "model.safetensors"])
  * or put model.safetensors (and vocab.json, merges.txt) in a folder and set the environment
    variable {ENV_VAR} to that folder."""


def _hub_cache_file(repo_id: str, filename: str) -> Path | None:
    """The path of ``filename`` of ``repo_id`` in the local Hugging Face cache, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def find_gpt2_weights(repo_id: str = "gpt2", folders: list[str | Path] | None = None) -> Path | None:
    """A local GPT-2 weight file, or ``None``; looks in ``folders``, ``$ATTN_COURSE_GPT2``, then the HF cache.

    Nothing is downloaded: the Hugging Face cache is read with ``try_to_load_from_cache``.
    """
    candidates = [Path(f) for f in (folders or [])]
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    for folder in candidates:
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
    for name in WEIGHT_FILES:
        found = _hub_cache_file(repo_id, name)
        if found is not None:
            return found
    return None


def load_gpt2_weights(path: str | Path, config: GPTConfig | None = None) -> GPT:
    """Read a GPT-2 weight file (safetensors or a torch pickle of tensors) into the package's ``GPT``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return load_gpt2_state_dict(state_dict, config).eval()


def find_gpt2_tokenizer(weights: Path | None, repo_id: str = "gpt2"):
    """A ``transformers`` GPT-2 tokenizer from local files next to ``weights`` or in the HF cache, or ``None``."""
    try:
        from transformers import GPT2TokenizerFast
    except Exception:  # not installed, or broken in this environment
        return None
    for source in ([str(weights.parent)] if weights is not None else []) + [repo_id]:
        try:
            tokenizer = GPT2TokenizerFast.from_pretrained(source, local_files_only=True)
        except Exception:  # noqa: PERF203 - the files are simply not there
            continue
        if len(tokenizer) >= 50257 and tokenizer("a b").input_ids:  # GPT-2's vocabulary, not an empty one
            return tokenizer
    return None


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """``model``'s weights under Hugging Face GPT-2's names, with its Conv1D layout ``(in, out)``."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("attn.qkv", "attn.c_attn").replace("attn.out", "attn.c_proj")
        if key.startswith("h.") and key.endswith("weight") and (".attn." in key or ".mlp." in key):
            value = value.t().contiguous()  # nn.Linear (out, in) -> Conv1D (in, out)
        out[key if key == "lm_head.weight" else f"transformer.{key}"] = value
    return out


def _outputs_of(blocks, run) -> list[torch.Tensor]:
    """Run ``run()`` and return what each module of ``blocks`` output (its first output if a tuple)."""
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out)
                                                                     .detach().clone())) for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def block_outputs(ours: GPT, hf, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(ours, theirs)]`` for each block: the hidden states ``(B, T, D)`` after it, for ``idx (B, T)``.

    ``hf`` is a ``transformers`` ``GPT2LMHeadModel`` (read by attribute; nothing is imported).
    Comparing block by block finds the first layer where two implementations part.
    """
    mine = _outputs_of(list(ours.h), lambda: ours(idx))
    theirs = _outputs_of(list(hf.transformer.h), lambda: hf(idx))
    if len(mine) != len(theirs):
        raise ValueError(f"ours has {len(mine)} blocks, hf has {len(theirs)}")
    return list(zip(mine, theirs))


def draw_block_comparison(fig, runs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], block: int,
                          show: str) -> None:
    """Left: max |ours - theirs| after each block, one line per loader in ``runs`` (log scale), the
    slider's ``block`` marked. Right: that block's values, ours against theirs, for loader ``show``."""
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    for (name, pairs), color in zip(runs.items(), ("tab:green", "tab:red", "tab:blue")):
        diffs = [max((a - b).abs().max().item(), 1e-9) for a, b in pairs]  # 1e-9: a floor for the log scale
        left.semilogy(range(1, len(pairs) + 1), diffs, marker="o", color=color, label=name)
    left.axvline(block, color="0.6", linestyle="--", linewidth=1)
    left.set(xlabel="after block", ylabel="max |ours - transformers|", title="Where the two models part")
    left.set_xticks(range(1, len(next(iter(runs.values()))) + 1))
    left.legend(fontsize=8, loc="upper left")
    a, b = runs[show][block - 1]
    right.scatter(b.flatten().numpy(), a.flatten().numpy(), s=3, alpha=0.5, color="tab:red")
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    right.plot([lo, hi], [lo, hi], color="0.4", linewidth=0.8)
    right.set(xlabel="transformers", ylabel="ours")
    right.set_title(f"{show}:\nafter block {block}", fontsize=9)  # two lines: a loader's name can be long


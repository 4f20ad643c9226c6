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
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from attn_course.gpt import GPT, GPTConfig, load_gpt2_state_dict

__all__ = ["ENV_VAR", "WEIGHT_FILES", "HOW_TO_GET_GPT2", "find_gpt2_weights", "load_gpt2_weights",
           "find_gpt2_tokenizer", "hf_state_dict"]

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

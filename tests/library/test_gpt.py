"""GPT, generation and the GPT-2 loader: cached vs uncached decoding, batching, sampling, errors."""

import pytest
import torch

from attn_course.decoding import (
    generate,
    generation_macs,
    sample_next,
    sampling_distribution,
    top_k_filter,
    top_p_filter,
)
from attn_course.gpt import CACHE_KINDS, GPT, GPTConfig, load_gpt2_state_dict, make_cache


def tiny_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=61, context_length=48, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


# --------------------------------------------------------------------------- the cache test


@pytest.mark.parametrize("ragged", [False, True], ids=["same-length", "ragged"])
@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_cached_generation_matches_uncached(kind, ragged):
    """Every cache kind: same greedy tokens and logits (<= 1e-5) as recomputing everything.

    The sliding-window cache is compared with full recomputation under a sliding-window mask
    (the model's ``sliding_window``), with a prompt longer than the window so that the ring wraps
    during prefill and during decoding. Ragged batches (left padding) must also give each row
    exactly what that prompt gives alone.
    """
    window = 5 if kind == "sliding" else None
    torch.manual_seed(0)
    model = GPT(tiny_config(sliding_window=window)).eval()
    idx = torch.randint(0, 61, (3, 8))
    mask = None
    lengths = [8, 8, 8]
    if ragged:
        lengths = [8, 3, 6]
        mask = torch.zeros(3, 8, dtype=torch.long)
        for b, n in enumerate(lengths):
            mask[b, 8 - n:] = 1
    new = 12
    ref, ref_logits = generate(model, idx, new, cache=None, attention_mask=mask, return_logits=True)
    out, logits = generate(model, idx, new, cache=kind, attention_mask=mask, return_logits=True)
    assert torch.equal(out, ref)
    assert (logits - ref_logits).abs().max().item() <= 1e-5
    for b, n in enumerate(lengths):  # each prompt alone, no padding
        alone, alone_logits = generate(model, idx[b:b + 1, 8 - n:], new, cache=kind, return_logits=True)
        assert torch.equal(out[b, 8 - n:], alone[0])
        assert (logits[b] - alone_logits[0]).abs().max().item() <= 1e-5


def test_sdpa_and_naive_attention_agree():
    fast = tiny_model()
    naive = GPT(tiny_config(attention="naive")).eval()
    naive.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 61, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    torch.testing.assert_close(naive(idx), fast(idx), atol=1e-5, rtol=0)
    torch.testing.assert_close(naive(idx, attention_mask=mask), fast(idx, attention_mask=mask), atol=1e-5, rtol=0)


def test_forward_in_chunks_equals_one_pass():
    """Prefill in two chunks (a mask with a past) = one pass; the cache advances by T each call."""
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 11))
    full = model(idx)
    cache = model.new_cache("static", batch_size=2, max_len=11)
    a = model(idx[:, :6], cache)
    b = model(idx[:, 6:], cache)
    assert cache.seq_len == 11
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=1e-5, rtol=0)


def test_sampling_is_reproducible_and_cache_independent():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 4))
    a = generate(model, idx, 10, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    b = generate(model, idx, 10, temperature=0.8, top_k=20, top_p=0.9, seed=3, cache=None)
    c = generate(model, idx, 10, temperature=0.8, top_k=20, top_p=0.9, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generated_tokens_are_ordinary_tensors():
    """Decoding uses inference_mode inside, but what it returns can be trained on."""
    model = tiny_model()
    out = generate(model, torch.zeros(1, 2, dtype=torch.long), 3)
    assert not out.is_inference()
    logits = model(out)
    logits.sum().backward()
    assert model.wte.weight.grad is not None


def test_training_mode_is_restored():
    model = tiny_model().train()
    generate(model, torch.zeros(1, 2, dtype=torch.long), 2)
    assert model.training


# --------------------------------------------------------------------------- sampling


def test_top_k_filter_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()


def test_top_p_filter_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum() == 1  # the arg-max always survives


def test_sampling_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert sampling_distribution(logits, 0.0).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(sampling_distribution(logits, 1.0), logits.softmax(-1))
    hot, cold = sampling_distribution(logits, 2.0), sampling_distribution(logits, 0.5)
    assert hot[0, 0] < logits.softmax(-1)[0, 0] < cold[0, 0]  # temperature flattens / sharpens
    p = sampling_distribution(logits, 1.0, top_k=2)
    assert p[0, 2:].sum() == 0 and torch.isclose(p.sum(), torch.tensor(1.0))
    assert sample_next(logits).tolist() == [0]


# --------------------------------------------------------------------------- work


def test_generation_macs():
    cfg = GPTConfig()  # GPT-2 small
    cached = [generation_macs(t, cfg) for t in (1, 100, 1000)]
    uncached = [generation_macs(t, cfg, cached=False) for t in (1, 100, 1000)]
    assert cached[0] == uncached[0]  # the first token costs the same either way
    assert uncached[2] > 500 * cached[2]  # recomputing 1000 tokens
    # ~85M non-embedding weights x 1 token + the 38.6M-weight output layer
    assert 1.2e8 < cached[0] < 1.3e8


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    model = tiny_model()
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="idx has 49 tokens.*context_length = 48"):
        generate(model, torch.zeros(1, 49, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="max_new_tokens = 45"):
        generate(model, idx, 45)
    with pytest.raises(ValueError, match="at least one prompt token"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"top_p must be None or in \(0, 1\], got 1.5"):
        generate(model, idx, 2, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.zeros(1, 3), 0.0)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate(model, idx, 2, temperature=-0.5)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, idx, 2, temperature=1.0, top_k=0)
    other = make_cache(tiny_config(n_layer=3), "dynamic")
    with pytest.raises(ValueError, match=r"cache was built for \(layers, kv heads, head_dim\) = \(3, 4, 8\); "
                                         r"this model has \(2, 4, 8\)"):
        generate(model, idx, 2, cache=other)
    with pytest.raises(ValueError, match="cache was built for"):
        model(idx, cache=make_cache(tiny_config(n_kv_head=2), "static"))
    with pytest.raises(ValueError, match="n_kv_head = 3 must divide n_head = 4"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)
    with pytest.raises(ValueError, match="n_head = 5 must divide n_embd = 32"):
        GPTConfig(n_head=5, n_embd=32)
    with pytest.raises(ValueError, match="cache has capacity = 5; this generation needs 6 positions"):
        generate(model, idx, 2, cache=model.new_cache("static", batch_size=1, max_len=5))
    with pytest.raises(ValueError, match="cache was built for batch_size = 2; idx has 1 rows"):
        generate(model, idx, 2, cache=model.new_cache("static", batch_size=2, max_len=8))
    with pytest.raises(ValueError, match="cache kind must be one of"):
        generate(model, idx, 2, cache="ring")
    with pytest.raises(ValueError, match="attention_mask must be left-padded"):
        generate(model, idx, 2, attention_mask=torch.tensor([[1, 1, 0, 0]]))
    with pytest.raises(ValueError, match=r"idx has shape \(4,\)"):
        model(torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- GPT-2 loader


def _transformers():
    """transformers, or a skip naming why its GPT-2 cannot be imported (a broken environment, e.g.
    a torchvision built for another torch makes every transformers model fail to import)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    try:
        transformers.GPT2LMHeadModel  # noqa: B018 - the lazy import happens here
    except (ImportError, RuntimeError) as err:
        pytest.skip(f"transformers.GPT2LMHeadModel cannot be imported here: {err.__cause__ or err}")
    return transformers


@pytest.fixture
def hf_gpt2():
    transformers = _transformers()
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(hf_config).eval()


def test_loader_matches_transformers(hf_gpt2):
    model = load_gpt2_state_dict(hf_gpt2.state_dict(), hf_gpt2.config)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        theirs = hf_gpt2(idx).logits
    torch.testing.assert_close(model(idx), theirs, atol=1e-4, rtol=0)
    with torch.no_grad():
        hf_tokens = hf_gpt2.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=12,
                                     do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, idx, 12), hf_tokens)
    assert torch.equal(generate(model, idx, 12, cache=None), hf_tokens)


def test_loader_infers_config_from_shapes():
    transformers = _transformers()
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=128,
                                                              n_layer=1, n_head=2)).eval()
    model = load_gpt2_state_dict(hf.state_dict())  # n_head = 128 // 64 = 2, GPT-2's head_dim
    assert (model.config.n_layer, model.config.n_head, model.config.context_length) == (1, 2, 16)
    idx = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_loader_ignores_mask_buffers_and_rejects_unknown_keys():
    sd = {f"transformer.{k}": v for k, v in _hf_layout(tiny_model()).items()}
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 48, 48)  # old transformers' causal buffer
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    model = load_gpt2_state_dict(sd, tiny_config())
    assert model.config.n_layer == 2
    sd["transformer.h.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="keys this loader does not know"):
        load_gpt2_state_dict(sd, tiny_config())


def _hf_layout(model: GPT) -> dict:
    """Our weights under Hugging Face's names and Conv1D (in, out) layout."""
    out = {}
    names = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj"}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        for ours, theirs in names.items():
            k = k.replace(ours, theirs)
        conv = k.startswith("h.") and k.endswith("weight") and ("attn" in k or "mlp" in k)
        out[k] = v.t() if conv else v
    return out


def test_one_model_call_per_new_token_with_or_without_a_cache():
    """The loop: the prompt is the first feed, then one call per token; with a cache each later call
    feeds only the newest token, without one the whole sequence."""
    model = tiny_model()
    idx = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    for cache in ("dynamic", None):
        fed = []
        handle = model.register_forward_pre_hook(lambda _m, args, fed=fed: fed.append(args[0].shape[1]))
        try:
            out = generate(model, idx, 4, cache=cache)
        finally:
            handle.remove()
        assert fed == ([5, 1, 1, 1] if cache else [5, 6, 7, 8])
        assert not out.is_inference() and not out.requires_grad  # ordinary tensors, usable later


def test_caches_say_what_the_model_must_respect():
    """No isinstance on cache kinds in the model: each cache declares its window and its capacity."""
    cfg = tiny_config()
    assert make_cache(cfg, "static", max_len=20).capacity == 20
    assert make_cache(cfg, "sliding", window=6).window == 6
    for kind in ("dynamic", "static", "paged"):
        assert make_cache(cfg, kind).window is None
    for kind in ("dynamic", "sliding", "paged"):
        assert make_cache(cfg, kind, window=6).capacity is None
    import inspect

    import attn_course.decoding as decoding
    import attn_course.gpt as gpt
    source = inspect.getsource(gpt) + inspect.getsource(decoding)
    for kind in ("DynamicCache", "StaticCache", "SlidingWindowCache", "PagedCache"):
        assert f"isinstance(cache, {kind})" not in source

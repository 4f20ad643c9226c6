"""Decode-phase attention in torch: split-K and paged decode against SDPA, and their errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_course.decode_attention import (
    check_paged,
    choose_num_splits,
    decode_reference,
    gather_kv,
    gather_then_attend,
    merge_splits,
    paged_decode,
    split_bounds,
    split_k_decode,
    split_k_partials,
)
from attn_course.kv_cache import PagedCache


def make(B, H, H_kv, L, S, d, d_v=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g)
    k = 2 * torch.randn(B, H_kv, S, d, generator=g)  # large scores: the max matters
    v = torch.randn(B, H_kv, S, d_v or d, generator=g)
    return q, k, v


def sdpa(q, k, v, scale=None):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def paged_copy(k, v, block_size, seq_lens, seed=0):
    """A pool holding each sequence's first seq_lens[b] positions in shuffled blocks, and its table."""
    B, H_kv, S, d = k.shape
    P = block_size
    blocks = [-(-int(n) // P) for n in seq_lens]
    T = max(blocks)
    num_blocks = sum(blocks) + 3  # a few blocks nobody uses
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    k_pool = torch.randn(num_blocks, P, H_kv, d)  # garbage everywhere, then the real positions
    v_pool = torch.randn(num_blocks, P, H_kv, v.shape[3])
    table = torch.full((B, T), -1, dtype=torch.long)
    nxt = 0
    for b, n in enumerate(seq_lens):
        for j in range(blocks[b]):
            blk = int(perm[nxt])
            nxt += 1
            table[b, j] = blk
            lo, hi = j * P, min((j + 1) * P, int(n))
            k_pool[blk, : hi - lo] = k[b, :, lo:hi].transpose(0, 1)
            v_pool[blk, : hi - lo] = v[b, :, lo:hi].transpose(0, 1)
    return k_pool, v_pool, table, torch.tensor(seq_lens)


@pytest.mark.parametrize("H,H_kv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 40])
def test_split_k_equals_sdpa_for_any_number_of_splits(H, H_kv, num_splits):
    q, k, v = make(2, H, H_kv, 1, 37, 8, d_v=5)
    torch.testing.assert_close(split_k_decode(q, k, v, num_splits), sdpa(q, k, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(decode_reference(q, k, v), sdpa(q, k, v), atol=1e-5, rtol=0)


def test_split_k_several_queries_and_scale():
    q, k, v = make(1, 4, 2, 3, 20, 8)
    torch.testing.assert_close(split_k_decode(q, k, v, 4, scale=0.3), sdpa(q, k, v, scale=0.3), atol=1e-5, rtol=0)


def test_split_bounds_cover_the_keys_once_with_empty_tail_splits():
    assert split_bounds(10, 3) == [(0, 4), (4, 8), (8, 10)]
    bounds = split_bounds(5, 4)  # chunks of 2: the fourth split is empty
    assert bounds == [(0, 2), (2, 4), (4, 5), (5, 5)]
    q, k, v = make(1, 2, 2, 1, 5, 4)
    m, lsum, acc = split_k_partials(q, k, v, 4)
    assert torch.isneginf(m[3]).all() and (lsum[3] == 0).all() and (acc[3] == 0).all()
    torch.testing.assert_close(merge_splits(m, lsum, acc), sdpa(q, k, v), atol=1e-5, rtol=0)


def test_merge_is_order_free():
    q, k, v = make(1, 2, 1, 1, 30, 8)
    m, lsum, acc = split_k_partials(q, k, v, 5)
    order = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(merge_splits(m[order], lsum[order], acc[order]), merge_splits(m, lsum, acc), atol=1e-6, rtol=0)


def test_choose_num_splits():
    assert choose_num_splits(programs=8, num_keys=32768, num_sms=132) == 16  # 128 of 132 SMs, one wave
    assert choose_num_splits(programs=256, num_keys=32768, num_sms=132) == 1  # already full
    assert choose_num_splits(programs=8, num_keys=1024, num_sms=132) == 4  # at least 256 keys a split
    assert choose_num_splits(programs=8, num_keys=100, num_sms=132) == 1


@pytest.mark.parametrize("H,H_kv,P", [(4, 4, 4), (4, 2, 8), (8, 1, 3)])
def test_paged_decode_and_gather_equal_sdpa_per_sequence(H, H_kv, P):
    lens = [13, 1, 24]
    q, k, v = make(3, H, H_kv, 1, 24, 8)
    k_pool, v_pool, table, seq_lens = paged_copy(k, v, P, lens)
    out = paged_decode(q, k_pool, v_pool, table, seq_lens, block_size=P)
    gathered = gather_then_attend(q, k_pool, v_pool, table, seq_lens)
    for b, n in enumerate(lens):
        want = sdpa(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n])
        torch.testing.assert_close(out[b : b + 1], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(gathered[b : b + 1], want, atol=1e-5, rtol=0)


def test_paged_decode_reads_a_paged_cache_as_the_model_fills_it():
    q, k, v = make(2, 4, 2, 1, 19, 8)
    cache = PagedCache(1, 2, 8, batch_size=2, block_size=4, num_blocks=16)
    cache.update(0, k[:, :, :11], v[:, :, :11])  # a prompt, then a few decode steps
    for t in range(11, 19):
        cache.update(0, k[:, :, t : t + 1], v[:, :, t : t + 1])
    table, lens = torch.tensor(cache.block_tables), torch.full((2,), cache.seq_len)
    out = paged_decode(q, cache.key_pool[0], cache.value_pool[0], table, lens)
    torch.testing.assert_close(out, sdpa(q, k, v), atol=1e-5, rtol=0)


def test_gather_copies_the_whole_table():
    q, k, v = make(2, 2, 2, 1, 10, 4)
    k_pool, v_pool, table, lens = paged_copy(k, v, 4, [10, 5])
    kg, vg = gather_kv(k_pool, v_pool, table, lens)
    assert kg.shape == (2, 2, 12, 4) and kg.untyped_storage().data_ptr() != k_pool.untyped_storage().data_ptr()
    torch.testing.assert_close(kg[0, :, :10], k[0])


def test_paged_errors_name_the_problem():
    q, k, v = make(2, 4, 2, 1, 8, 4)
    k_pool, v_pool, table, lens = paged_copy(k, v, 4, [8, 5])
    args = (q, k_pool, v_pool)
    bad = table.clone()
    bad[1, 1] = 99
    with pytest.raises(ValueError, match=r"block_table\[1, 1\] = 99 points outside the pool"):
        paged_decode(*args, bad, lens)
    bad[1, 1] = -1  # past the last block of sequence 1 (5 positions = 2 blocks of 4): -1 is read
    with pytest.raises(ValueError, match="outside the pool"):
        paged_decode(*args, bad, lens)
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 9 .* cover at most 8"):
        paged_decode(*args, table, torch.tensor([9, 5]))
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = 0"):
        paged_decode(*args, table, torch.tensor([8, 0]))
    with pytest.raises(ValueError, match="block_size = 8"):
        paged_decode(*args, table, lens, block_size=8)
    with pytest.raises(TypeError, match="block_table must be an integer tensor"):
        paged_decode(*args, table.float(), lens)
    with pytest.raises(ValueError, match=r"seq_lens has shape \(3,\)"):
        paged_decode(*args, table, torch.tensor([8, 5, 1]))
    with pytest.raises(ValueError, match="H_kv dividing q's 4 query heads"):
        check_paged(q, k_pool[:, :, :1].repeat(1, 1, 3, 1), v_pool[:, :, :1].repeat(1, 1, 3, 1), table, lens)
    with pytest.raises(ValueError, match=r"k_pool has shape .*\(N_blk, P, H_kv, 4\)"):
        paged_decode(q, k_pool[..., :3], v_pool, table, lens)
    # the last unused entry of a shorter sequence may be anything
    ok = table.clone()
    ok[1, 1] = 1
    ok = torch.cat([ok, torch.full((2, 1), -7)], dim=1)
    paged_decode(*args, ok, lens)


def test_split_k_errors():
    q, k, v = make(1, 4, 2, 1, 8, 4)
    with pytest.raises(ValueError, match="num_splits must be a positive int"):
        split_k_decode(q, k, v, 0)
    with pytest.raises(ValueError, match="H_kv dividing q's 4 query heads"):
        split_k_decode(q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1), 2)
    with pytest.raises(ValueError, match=r"k has shape \(1, 2, 8, 3\); expected \(1, H_kv, S, 4\)"):
        split_k_decode(q, k[..., :3], v, 2)
    with pytest.raises(ValueError, match="the B, H_kv and S of k"):
        split_k_decode(q, k, v[:, :, :5], 2)
    with pytest.raises(ValueError, match="at least one key"):
        split_k_decode(q, k[:, :, :0], v[:, :, :0], 2)


def test_paged_decode_on_forked_sequences_sharing_prompt_blocks():
    """Sequences forked from one prompt share its blocks (PagedCache.fork): read in place, shared or not."""
    q, k, v = make(3, 4, 2, 1, 14, 8)
    cache = PagedCache(1, 2, 8, batch_size=1, block_size=4, num_blocks=16)
    cache.update(0, k[:1, :, :9], v[:1, :, :9])  # one prompt of 9 positions: blocks 0, 1, 2
    cache.fork(0)
    cache.fork(0)
    for t in range(9, 14):  # three continuations, each its own keys
        cache.update(0, k[:, :, t : t + 1], v[:, :, t : t + 1])
    table = torch.tensor(cache.block_tables)
    assert table[0, 0] == table[1, 0] == table[2, 0] and table[0, 1] == table[2, 1]  # full prompt blocks shared
    lens = torch.full((3,), cache.seq_len)
    out = paged_decode(q, cache.key_pool[0], cache.value_pool[0], table, lens)
    for b in range(3):
        keys = torch.cat([k[:1, :, :9], k[b : b + 1, :, 9:14]], dim=2)
        values = torch.cat([v[:1, :, :9], v[b : b + 1, :, 9:14]], dim=2)
        torch.testing.assert_close(out[b : b + 1], sdpa(q[b : b + 1], keys, values), atol=1e-5, rtol=0)

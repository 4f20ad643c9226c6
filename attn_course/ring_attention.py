"""Ring attention (Liu et al. 2023): the sequence is split over P processes; key/value blocks travel
around a ring while each process folds them into its queries' online softmax.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    P    number of processes (world size)      r  this process's rank
    N    full sequence length; n = N / P tokens per process (the local chunk)
    d    query/key width       d_v  value width

Process ``r`` holds the chunk ``r`` of the sequence: ``q_local, k_local (B, H, n, d)``,
``v_local (B, H, n, d_v)`` (positions ``r*n .. (r+1)*n - 1``). In step ``s = 0 .. P-1`` it
attends its queries to the key/value chunk of rank ``(r - s) mod P`` and, at the same time,
sends that chunk to rank ``r + 1`` and receives the next one from rank ``r - 1``. The partial
results ``(m, l, acc)`` are combined exactly with ``attn_course.flash.merge_partials``, so the
output equals single-process attention; no process ever holds more than two K/V chunks.

With ``causal``, chunks from later ranks are skipped (their keys are all in the future) and the
own chunk is masked; ranks with low ``r`` then idle (load-balanced variants reorder the tokens).

* ``ring_attention``              the per-process function (call it inside a process group).
* ``launch``                      start P CPU processes with gloo, the way ``torchrun`` does.
* ``ring_attention_multiprocess`` split full q/k/v, run ``ring_attention`` on P processes, gather.
* ``ring_communication_volume``   bytes sent vs FLOPs per ring step.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attn_course._validation import require_int
from attn_course.flash import block_partial, check_qkv, merge_partials
from attn_course.masking import causal_mask

__all__ = [
    "ring_attention",
    "launch",
    "ring_attention_multiprocess",
    "RingVolume",
    "ring_communication_volume",
]


# --------------------------------------------------------------------------- the ring


def _exchange(send: torch.Tensor, recv: torch.Tensor, rank: int, world: int, group) -> list:
    """Start sending ``send`` to the next rank and receiving ``recv`` from the previous one."""
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    if group is not None:  # point-to-point ops take global ranks
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
    return dist.batch_isend_irecv(ops)


def ring_attention(
    q_local: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    causal: bool = False,
    group: dist.ProcessGroup | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """This process's rows of ``softmax(Q K^T * scale) V`` over the whole (distributed) sequence.

    Every process of ``group`` (default: the world) must call it, with chunks of the same shape,
    the chunks in rank order along the sequence.

    Args:
        q_local: ``(B, H, n, d)``.  k_local: ``(B, H, n, d)``.  v_local: ``(B, H, n, d_v)``.
        causal: query at global position ``i`` sees keys ``j <= i``.
        group: the process group (``None``: the default one).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, n, d_v)``: the attention output of this process's queries.
    """
    check_qkv(q_local, k_local, v_local, ("q_local", "k_local", "v_local"))
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention needs an initialised torch.distributed process group "
                           "(see attn_course.ring_attention.launch)")
    if causal and q_local.shape[2] != k_local.shape[2]:
        raise ValueError(f"k_local has shape {tuple(k_local.shape)}; causal ring attention needs chunks of "
                         f"equal length (q_local has n = {q_local.shape[2]})")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = q_local.shape[2]
    # K and V travel together in one buffer: one message per step instead of two.
    kv = torch.cat([k_local, v_local], dim=-1).contiguous()  # (B, H, n, d + d_v)
    d = k_local.shape[-1]
    incoming = torch.empty_like(kv)
    own_mask = causal_mask(n, device=q_local.device) if causal else None  # (n, n)
    state = None  # (m, l, acc) of the keys seen so far
    for step in range(world):
        src = (rank - step) % world  # whose chunk we hold in this step
        reqs = _exchange(kv, incoming, rank, world, group) if step < world - 1 else []  # overlap comm and compute
        if not causal or src <= rank:  # causal: chunks of later ranks hold only future keys
            part = block_partial(q_local, kv[..., :d], kv[..., d:], scale=scale,
                                 mask=own_mask if src == rank else None)
            state = part if state is None else merge_partials(*state, *part)
        for req in reqs:
            req.wait()
        if reqs:
            kv, incoming = incoming, kv  # the received chunk is next; the old buffer receives again
    m, l, acc = state  # step 0 (own chunk) always contributes, so state is set
    return acc / l.unsqueeze(-1)


# --------------------------------------------------------------------------- launching processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str) -> None:
    # what torchrun sets for each process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    # keep gloo's traffic on the loopback interface (otherwise it picks the host name's interface)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    torch.set_num_threads(1)  # P processes share the cores
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _start_method() -> str:
    """``forkserver`` where there is one: a server process imports torch once and forks every later
    process from that clean state (fast, and no threads are forked); elsewhere ``spawn``."""
    if "forkserver" in mp.get_all_start_methods():
        mp.set_forkserver_preload(["torch", "attn_course.ring_attention"])
        return "forkserver"
    return "spawn"


def launch(fn: Callable, world_size: int, args: tuple = (), timeout: float = 120.0) -> list:
    """Run ``fn(*args)`` in ``world_size`` fresh CPU processes joined in a gloo process group.

    Each process gets the environment ``torchrun`` would give it (``MASTER_ADDR=127.0.0.1``, a
    free ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and one torch thread; inside
    ``fn`` use ``torch.distributed.get_rank()``. ``fn`` must be importable (a module-level
    function). Returns the list of the processes' return values, by rank.
    """
    require_int(world_size, "world_size")
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_worker, args=(world_size, _free_port(), fn, args, out_dir),
                                 nprocs=world_size, join=False, start_method=_start_method())
        waited = 0.0
        while not ctx.join(timeout=1.0):  # raises ProcessRaisedException if a rank failed
            waited += 1.0
            if waited > timeout:
                for p in ctx.processes:
                    p.terminate()
                raise TimeoutError(f"launch: {world_size} processes did not finish within {timeout} s")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]


def _ring_rank(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Inside process ``r``: take chunk ``r`` of the full tensors and run ``ring_attention``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = q.shape[2] // world
    chunk = slice(rank * n, (rank + 1) * n)
    return ring_attention(q[:, :, chunk], k[:, :, chunk], v[:, :, chunk], causal=causal)


def ring_attention_multiprocess(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, world_size: int, causal: bool = False
) -> torch.Tensor:
    """Split ``q, k, v (B, H, N, d)`` into ``world_size`` chunks along N, run ring attention on that
    many processes, and concatenate their outputs: ``(B, H, N, d_v)``, equal to plain attention.

    ``N`` must be divisible by ``world_size``. (Each process receives the full tensors and keeps its
    chunk: fine for a demonstration; in real use each process loads only its own chunk.)
    """
    check_qkv(q, k, v)
    N = q.shape[2]
    if k.shape[2] != N or N % world_size:
        raise ValueError(f"q and k have lengths {N} and {k.shape[2]}; expected equal lengths divisible by "
                         f"world_size = {world_size}")
    outs = launch(_ring_rank, world_size, (q, k, v, causal))
    return torch.cat(outs, dim=2)  # P x (B, H, n, d_v) -> (B, H, N, d_v)


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class RingVolume:
    """Per process and per ring step: what is sent and what is computed."""

    bytes_per_step: int  # one K chunk and one V chunk
    flops_per_step: float  # attention of the local queries to one chunk (non-causal)
    steps: int  # P - 1 sends per process

    @property
    def flops_per_byte(self) -> float:
        """Arithmetic intensity of a step: grows with the chunk length n."""
        return self.flops_per_step / self.bytes_per_step

    def bandwidth_to_hide(self, flops_per_second: float) -> float:
        """Bytes/s of link bandwidth at which sending a chunk takes as long as computing on one."""
        return self.bytes_per_step / (self.flops_per_step / flops_per_second)


def ring_communication_volume(
    N: int, world_size: int, head_dim: int, heads: int = 1, batch: int = 1, dtype_bytes: int = 2
) -> RingVolume:
    """Bytes each process sends per step (``2 B H n d`` elements: K and V) vs its FLOPs per step
    (``4 B H n^2 d``), with ``n = N / P``. Their ratio ``2 n / dtype_bytes`` FLOP/byte grows with
    the chunk: long enough chunks hide the communication behind the computation.
    """
    for value, name in ((N, "N"), (world_size, "world_size"), (head_dim, "head_dim"), (heads, "heads"),
                        (batch, "batch"), (dtype_bytes, "dtype_bytes")):
        require_int(value, name)
    n = math.ceil(N / world_size)
    sent = 2 * batch * heads * n * head_dim * dtype_bytes
    flops = 4.0 * batch * heads * n * n * head_dim
    return RingVolume(sent, flops, world_size - 1)

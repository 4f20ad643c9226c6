"""Chapter 6's experiment: self-attention against an RNN and a CNN.

The mechanism, :class:`attn_course.self_attention.SelfAttention`, is in the library. This lab
holds the layers it is compared with and the measurements the chapter plots and asserts.

Dimension glossary (see ``attn_course`` for the full one)::

    ...    any leading batch dimensions, e.g. (B,)
    T      sequence length (L == S == T in self-attention)
    d_in   input width             d_out  width of the queries, keys, values and output
    d      the common width of the layers compared below (d_in == d_out == d)
    k      convolution kernel size

Layers compared, all mapping ``(..., T, d_in)`` to ``(..., T, d_out)``:

* ``SelfAttention``  every position attends to every position: one layer connects all pairs.
* ``RNNLayer``       an Elman RNN, ``h_t = tanh(W_x x_t + W_h h_{t-1})``, as an explicit Python
                     loop over the T positions (``GRULayer`` wraps ``torch.nn.GRU``'s C++ loop).
* ``ConvStack``      ``num_layers`` ``Conv1d`` layers of kernel ``k``, each followed by ``tanh``.

Measurements:

* ``influence_matrix``       which input positions an output position depends on (autograd Jacobian).
* ``reach``                  which output positions depend on one input position (forward-mode AD).
* ``receptive_field_layers`` the formula: convolution layers needed so position 0 reaches T - 1;
  ``layers_to_connect`` measures the same number with forward-mode AD.
* ``sequential_depth``       the longest chain of dependent matrix products from the input to the
                             output, read off the autograd graph.
* ``layer_flops``            matrix-product FLOPs of one layer (formula); ``count_flops`` measures
                             them with ``torch.utils.flop_counter.FlopCounterMode``.
* ``time_forward``           best-of-n wall time of one forward pass; ``time_sweep`` over lengths.
* ``plot_vs_length``         a measured quantity against the sequence length, one curve per layer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import nn
from tqdm.auto import tqdm

from attn_course._validation import require_int, require_width
from attn_course.plotting import check_curves, finish_axes, new_axes
from attn_course.self_attention import SelfAttention
from attn_course.utils import flop_counter, num_threads

LAYER_KINDS = ("self_attention", "rnn", "gru", "cnn")


def _first(out: object) -> torch.Tensor:
    """A model's output tensor: ``SelfAttention`` returns ``(output, weights)``, the others a tensor."""
    return out[0] if isinstance(out, tuple) else out


def _model_width(model: nn.Module, d_in: int | None) -> int:
    if d_in is None:
        d_in = getattr(model, "d_in", None)
        if d_in is None:
            raise ValueError("d_in is needed: the model has no `d_in` attribute")
    return require_int(d_in, "d_in")


class RNNLayer(nn.Module):
    """An Elman RNN, ``h_t = tanh(W_x x_t + b + W_h h_{t-1})`` with ``h_{-1} = 0``, as a Python loop.

    The input projection ``W_x x_t`` is computed for all positions at once; the recurrence
    cannot be: step ``t`` needs ``h_{t-1}``. Same maths as ``torch.nn.RNN(d_in, d_out,
    nonlinearity="tanh", batch_first=True, bias=True)`` with ``bias_hh`` = 0.

    Input ``(..., T, d_in)``, output: all hidden states ``(..., T, d_out)``.
    """

    def __init__(self, d_in: int, d_out: int | None = None) -> None:
        super().__init__()
        self.d_in = require_int(d_in, "d_in")
        self.d_out = d_in if d_out is None else require_int(d_out, "d_out")
        self.W_x = nn.Linear(self.d_in, self.d_out)
        self.W_h = nn.Linear(self.d_out, self.d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_width(x, "x", self.d_in, f"(..., T, {self.d_in}): the last dim must be d_in = {self.d_in}")
        batch, T = x.shape[:-2], x.shape[-2]
        xw = self.W_x(x.reshape(-1, T, self.d_in))  # (N, T, d_out), N = prod(batch): all positions at once
        h = xw.new_zeros(xw.shape[0], self.d_out)  # (N, d_out)
        states = []
        for xw_t in xw.unbind(dim=1):  # the sequential part: T dependent steps. (unbind, not xw[:, t],
            # whose backward writes a zero tensor the size of all T steps at every step.)
            h = torch.tanh(xw_t + self.W_h(h))  # (N, d_out)
            states.append(h)
        return torch.stack(states, dim=1).reshape(*batch, T, self.d_out)  # (..., T, d_out)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class GRULayer(nn.Module):
    """``torch.nn.GRU`` (one layer, batch first), returning only its outputs ``(..., T, d_out)``.

    Its loop over the positions runs in C++, but it is still ``T`` dependent steps.
    """

    def __init__(self, d_in: int, d_out: int | None = None) -> None:
        super().__init__()
        self.d_in = require_int(d_in, "d_in")
        self.d_out = d_in if d_out is None else require_int(d_out, "d_out")
        self.gru = nn.GRU(self.d_in, self.d_out, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_width(x, "x", self.d_in, f"(..., T, {self.d_in}): the last dim must be d_in = {self.d_in}")
        batch, T = x.shape[:-2], x.shape[-2]
        out, _ = self.gru(x.reshape(-1, T, self.d_in))  # (N, T, d_out)
        return out.reshape(*batch, T, self.d_out)  # (..., T, d_out)


class ConvStack(nn.Module):
    """``num_layers`` 1-D convolutions of kernel ``kernel_size`` along the sequence, each + ``tanh``.

    The output keeps the length ``T``: ``causal=True`` pads ``kernel_size - 1`` zeros on the
    left (output ``t`` sees inputs ``t - k + 1 .. t``); ``causal=False`` pads ``(k - 1) / 2`` on
    each side (odd ``k``; output ``t`` sees ``t - (k-1)/2 .. t + (k-1)/2``).

    Input ``(..., T, d_in)``, output ``(..., T, d_out)``; every layer after the first is
    ``d_out -> d_out``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int | None = None,
        num_layers: int = 1,
        kernel_size: int = 3,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.d_in = require_int(d_in, "d_in")
        self.d_out = d_in if d_out is None else require_int(d_out, "d_out")
        self.kernel_size = require_int(kernel_size, "kernel_size")
        require_int(num_layers, "num_layers")
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd when causal=False, got {kernel_size}")
        self.causal = causal
        widths = [self.d_in] + [self.d_out] * num_layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel_size) for a, b in zip(widths, widths[1:]))

    def _pad(self) -> tuple[int, int]:
        k = self.kernel_size
        return (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` alone, channels first: ``(N, width, T)`` -> ``(N, d_out, T)``."""
        return torch.tanh(self.convs[i](F.pad(h, self._pad())))  # padded to T + k - 1, conv -> T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_width(x, "x", self.d_in, f"(..., T, {self.d_in}): the last dim must be d_in = {self.d_in}")
        batch, T = x.shape[:-2], x.shape[-2]
        h = x.reshape(-1, T, self.d_in).transpose(1, 2)  # (N, d_in, T): Conv1d wants channels first
        for i in range(len(self.convs)):
            h = self.layer(i, h)  # (N, d_out, T)
        return h.transpose(1, 2).reshape(*batch, T, self.d_out)  # (..., T, d_out)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, causal={self.causal}"


def make_layer(kind: str, d: int, *, kernel_size: int = 3, num_layers: int = 1) -> nn.Module:
    """One layer of width ``d`` (``d -> d``) of each kind in ``LAYER_KINDS``.

    ``"self_attention"``: ``SelfAttention(d, d)``; ``"rnn"``: ``RNNLayer(d)``; ``"gru"``:
    ``GRULayer(d)``; ``"cnn"``: ``ConvStack(d, d, num_layers, kernel_size)`` (causal).
    """
    if kind == "self_attention":
        return SelfAttention(d, d)
    if kind == "rnn":
        return RNNLayer(d)
    if kind == "gru":
        return GRULayer(d)
    if kind == "cnn":
        return ConvStack(d, d, num_layers=num_layers, kernel_size=kernel_size)
    raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")


def _double_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode: exact zeros stay zero, tiny non-zeros do not underflow."""
    return copy.deepcopy(model).double().eval()


def influence_matrix(
    model: nn.Module, T: int, d_in: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """How strongly output position ``t`` depends on input position ``s``, from the Jacobian.

    Runs a float64 copy of ``model`` on one random input ``x`` ``(1, T, d_in)`` and computes the
    full Jacobian ``d output / d x`` with autograd. Entry ``[t, s]`` is the Frobenius norm of the
    ``(d_out, d_in)`` block ``d output[t] / d x[s]``: exactly 0 when no path leads from input
    ``s`` to output ``t``. Meant for small ``T`` and widths (it does ``T * d_out`` backward passes).

    Args:
        model: maps ``(1, T, d_in)`` to ``(1, T, d_out)`` (or to ``(output, weights)``).
        T: sequence length.  d_in: input width (default ``model.d_in``).
        generator: for the random input.

    Returns:
        float64 tensor ``(T, T)``, rows = output positions, columns = input positions.
    """
    require_int(T, "T")
    d_in = _model_width(model, d_in)
    m = _double_copy(model)
    x = torch.randn(1, T, d_in, generator=generator, dtype=torch.float64)  # (1, T, d_in)
    jac = torch.autograd.functional.jacobian(lambda inp: _first(m(inp)), x)  # (1, T, d_out, 1, T, d_in)
    jac = jac[0, :, :, 0]  # (T, d_out, T, d_in)
    return jac.pow(2).sum(dim=(1, 3)).sqrt()  # (T, T)


def reach(
    model: nn.Module,
    T: int,
    source: int = 0,
    d_in: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which output positions depend on input position ``source``: one forward-mode AD pass.

    A float64 copy of ``model`` runs on a random ``x`` ``(1, T, d_in)`` with a random tangent
    at position ``source`` only (zero elsewhere); the output's tangent is non-zero exactly at the
    positions that ``x[source]`` influences. This is one column of ``influence_matrix``, cheap
    enough for long sequences.

    Args:
        model: as for ``influence_matrix``.  source: the input position, in ``[0, T)``.

    Returns:
        bool ``(T,)``, ``True`` = output position influenced by input ``source``.
    """
    require_int(T, "T")
    require_int(source, "source", 0, T - 1)
    d_in = _model_width(model, d_in)
    m = _double_copy(model)
    x = torch.randn(1, T, d_in, generator=generator, dtype=torch.float64)  # (1, T, d_in)
    tangent = torch.zeros_like(x)
    tangent[0, source] = torch.rand(d_in, generator=generator, dtype=torch.float64) + 0.5  # never 0
    with fwAD.dual_level(), torch.no_grad():
        out = _first(m(fwAD.make_dual(x, tangent)))  # (1, T, d_out)
        out_tangent = fwAD.unpack_dual(out).tangent  # (1, T, d_out)
    return out_tangent[0].abs().amax(dim=-1) > 0  # (T,)


def receptive_field_layers(kernel_size: int, T: int, *, causal: bool = True) -> int:
    """Convolution layers needed before output ``T - 1`` depends on input 0 (the formula).

    Each layer of kernel ``k`` widens the receptive field by ``k - 1`` positions: all on one
    side when ``causal``, half on each side otherwise. So the answer is
    ``ceil((T - 1) / (k - 1))`` (causal) or ``ceil((T - 1) / ((k - 1) / 2))`` (centred, odd ``k``).
    ``layers_to_connect`` measures it.
    """
    require_int(kernel_size, "kernel_size")
    require_int(T, "T")
    if T == 1:
        return 0
    if kernel_size == 1 or (not causal and kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be >= 2 (and odd when causal=False), got {kernel_size}")
    step = kernel_size - 1 if causal else (kernel_size - 1) // 2
    return math.ceil((T - 1) / step)


def layers_to_connect(
    kernel_size: int,
    T: int,
    *,
    causal: bool = True,
    d: int = 4,
    max_layers: int | None = None,
    generator: torch.Generator | None = None,
) -> int | None:
    """Measure how many convolution layers it takes for input 0 to influence output ``T - 1``.

    Stacks random ``d -> d`` layers of ``ConvStack(d, d, 1, kernel_size, causal)`` and
    pushes a forward-mode tangent, non-zero at input position 0 only, through them one at a time;
    after each layer the positions with a non-zero tangent are those input 0 reaches. Between
    layers each position's tangent is rescaled to unit norm: that keeps which positions are
    zero, and stops the tangent at the edge of the receptive field (a product of one kernel tap
    per layer) from underflowing to 0 after a few hundred layers.

    Returns:
        the first depth (1-based) at which output ``T - 1`` depends on input 0; 0 when ``T == 1``;
        ``None`` if ``max_layers`` (default ``T``) layers are not enough.
    """
    require_int(T, "T")
    if T == 1:
        return 0
    max_layers = T if max_layers is None else require_int(max_layers, "max_layers")
    h = torch.randn(1, d, T, generator=generator)  # (1, d, T): channels first
    tangent = torch.zeros_like(h)
    tangent[0, :, 0] = torch.rand(d, generator=generator) + 0.5  # input 0 only
    with num_threads(1):  # hundreds of tiny convolutions: threads would cost more than they save
        return _first_depth_reached(h, tangent, kernel_size, causal, max_layers)


def _first_depth_reached(
    h: torch.Tensor, tangent: torch.Tensor, kernel_size: int, causal: bool, max_layers: int
) -> int | None:
    d, T = h.shape[1], h.shape[2]
    for depth in range(1, max_layers + 1):
        with fwAD.dual_level(), torch.no_grad():
            layer = ConvStack(d, d, 1, kernel_size, causal)  # a fresh random layer per depth
            out = layer.layer(0, fwAD.make_dual(h, tangent))  # (1, d, T)
            h, tangent = fwAD.unpack_dual(out)
        norms = tangent.norm(dim=1, keepdim=True)  # (1, 1, T): 0 where input 0 has not arrived
        if norms[0, 0, T - 1] > 0:
            return depth
        tangent = tangent / torch.where(norms > 0, norms, torch.ones_like(norms))  # (1, d, T)
    return None


_MATMUL_NODES = ("MmBackward", "AddmmBackward", "BmmBackward", "BaddbmmBackward", "ConvolutionBackward")


def _is_matmul(node: object) -> bool:
    return type(node).__name__.startswith(_MATMUL_NODES)


def sequential_depth(
    model: nn.Module,
    T: int,
    d_in: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> int:
    """The longest chain of dependent matrix products from the input to the output.

    Runs ``model`` on ``x`` ``(1, T, d_in)`` with autograd on and walks the graph backwards from
    the output to ``x``, counting the matrix-product nodes (``mm``, ``addmm``, ``bmm``,
    convolutions) on the longest path. Products on that chain cannot run at the same time (each
    needs the previous one's result), whatever the hardware; elementwise operations are not
    counted. An RNN's chain grows with ``T`` (it ends at the last position); attention's does not.

    Returns:
        the number of matrix products on the longest input-to-output path (0 if there is none).
    """
    require_int(T, "T")
    d_in = _model_width(model, d_in)
    x = torch.randn(1, T, d_in, generator=generator, requires_grad=True)  # (1, T, d_in)
    with torch.enable_grad():
        y = _first(model(x))  # (1, T, d_out)
    if y.grad_fn is None:
        return 0
    # Longest path in the DAG, iteratively (an RNN's graph is thousands of nodes deep).
    depth: dict[object, int | None] = {}
    stack = [(y.grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if node in depth:
            continue
        if getattr(node, "variable", None) is x:  # AccumulateGrad of the input
            depth[node] = 0
            continue
        children = [c for c, _ in node.next_functions if c is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if c not in depth)
            continue
        reaching = [depth[c] for c in children if depth.get(c) is not None]
        depth[node] = max(reaching) + int(_is_matmul(node)) if reaching else None
    return depth[y.grad_fn] or 0


def layer_flops(kind: str, T: int, d: int, k: int = 3) -> int:
    """Matrix-product FLOPs of one ``d -> d`` layer on one sequence of length ``T`` (batch 1).

    A multiply-add is 2 FLOPs; biases, ``tanh``, the softmax and other elementwise operations are
    lower order and not counted (the convention of ``torch.utils.flop_counter``)::

        self_attention   3 projections 3 * 2Td^2  +  q k^T 2T^2 d  +  weights @ v 2T^2 d
                         = 6Td^2 + 4T^2 d            (quadratic in T)
        rnn              W_x x_t and W_h h_{t-1} at every step: 4Td^2
        gru              three gates, each with an input and a hidden matrix: 12Td^2
        cnn              k taps of a d x d matrix at every position: 2kTd^2

    ``count_flops`` measures the same numbers on the layers of ``make_layer``.
    """
    require_int(T, "T")
    require_int(d, "d")
    require_int(k, "k")
    if kind == "self_attention":
        return 6 * T * d * d + 4 * T * T * d
    if kind == "rnn":
        return 4 * T * d * d
    if kind == "gru":
        return 12 * T * d * d
    if kind == "cnn":
        return 2 * k * T * d * d
    raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")


def count_flops(model: nn.Module, T: int, d_in: int | None = None, *, batch: int = 1) -> int:
    """FLOPs of one forward pass on ``(batch, T, d_in)``, counted by ``FlopCounterMode``."""
    require_int(T, "T")
    require_int(batch, "batch")
    d_in = _model_width(model, d_in)
    x = torch.randn(batch, T, d_in)
    with flop_counter() as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    model: nn.Module,
    T: int,
    d_in: int | None = None,
    *,
    batch: int = 2,
    repeats: int = 5,
    device: torch.device | str | None = None,
    threads: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Fastest wall-clock seconds of ``repeats`` forward passes on ``(batch, T, d_in)``, no grad.

    One warm-up pass first; the minimum is the least disturbed run (others only add noise from
    other processes). Informational: compare ratios on one machine, not absolute values.
    ``device`` defaults to where the model's parameters are. ``threads`` pins torch's CPU
    threads for the measurement (restored afterwards); ``None`` leaves them as they are.
    """
    require_int(T, "T")
    require_int(batch, "batch")
    require_int(repeats, "repeats")
    d_in = _model_width(model, d_in)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    x = torch.randn(batch, T, d_in, generator=generator).to(device)  # (B, T, d_in)
    samples = []
    with torch.no_grad(), num_threads(threads):
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i:  # the first pass is the warm-up
                samples.append(time.perf_counter() - start)
    return min(samples)


def time_sweep(
    models: Mapping[str, nn.Module],
    Ts: Sequence[int],
    d_in: int | None = None,
    *,
    batch: int = 2,
    repeats: int = 5,
    device: torch.device | str | None = None,
    threads: int | None = None,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, list[float]]:
    """``time_forward`` of each model at each length: ``{label: [seconds at Ts[0], ...]}``.

    Lengths are the outer loop, so a load spike on a shared machine hits all models alike.
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError("models must be a non-empty dict mapping a label to an nn.Module")
    times: dict[str, list[float]] = {label: [] for label in models}
    bar = tqdm(total=len(Ts) * len(models), desc="timing forward passes", disable=not progress)
    for T in Ts:
        for label, model in models.items():
            bar.set_postfix_str(f"T={T} {label}")
            times[label].append(
                time_forward(
                    model,
                    T,
                    d_in,
                    batch=batch,
                    repeats=repeats,
                    device=device,
                    threads=threads,
                    generator=generator,
                )
            )
            bar.update()
    bar.close()
    return times

def plot_vs_length(
    lengths: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    ylabel: str,
    title: str,
    xlabel: str = "sequence length T (log scale)",
    logy: bool = True,
    references: Mapping[str, Sequence[float]] | None = None,
) -> Axes:
    """One line per curve against the sequence length (log2 x axis, log y by default).

    ``references`` adds dashed grey lines, e.g. ``{"slope 2 (T^2)": [...]}`` to compare growth.
    """
    check_curves(curves, "curves")
    ax = new_axes(ax)
    for label, values in curves.items():
        ax.plot(list(lengths), list(values), marker="o", markersize=4, label=label)
    for i, (label, values) in enumerate((references or {}).items()):
        style = ["--", ":", "-."][i % 3]
        ax.plot(list(lengths), list(values), color="0.5", linestyle=style, linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    if logy:
        ax.set_yscale("log")
    return finish_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title, legend_fontsize="small", grid_which="both")

"""Chapter 12's segmentation experiment: mark the larger of two shapes, pixel by pixel.

Every image holds two shapes of the same brightness, apart from each other (squares or disks: at
these sizes a disk is a square with its corners cut, or no different); the target mask is the
larger one. A patch inside a shape cannot tell from its own pixels whether
its shape is the larger: that takes the other shape, patches away. The tiny ViT segmenter (a
linear head on the patch tokens) is trained against the same model with the attention sublayers
removed, on the same data with the same budget; both are scored by IoU with the true mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from .._validation import require_int
from ..apps.vision import ViTConfig, ViTSegmenter
from ..utils import num_threads, seed_everything
from .training import fit

__all__ = [
    "ShapePairs",
    "make_shape_pairs",
    "mask_iou",
    "SegmentationResult",
    "run_segmentation",
    "plot_segmentation",
]


@dataclass
class ShapePairs:
    images: torch.Tensor  # (N, 1, I, I): both shapes at brightness 1 on a black background
    shapes: torch.Tensor  # (N, 2, I, I) bool: each shape's pixels
    larger: torch.Tensor  # (N, I, I) bool: the target, the pixels of the larger shape
    areas: torch.Tensor  # (N, 2) pixel counts


def make_shape_pairs(n: int, generator: torch.Generator, size: int = 8, min_side: int = 2, max_side: int = 4,
                     min_ratio: float = 1.3, max_ratio: float = 2.5) -> ShapePairs:
    """``n`` images of two shapes (square or disk) that do not touch, the larger covering
    ``min_ratio`` to ``max_ratio`` times the pixels of the smaller (so "larger" is never a tie, and
    the two are not so unequal that marking both shapes would be almost right).

    Rejection sampling, a batch of candidate pairs at a time: sides, corners and kinds are drawn
    at random, and the pairs that overlap (or touch) or have another area ratio are dropped.
    """
    n, size = require_int(n, "n"), require_int(size, "size", minimum=4)
    min_side = require_int(min_side, "min_side")
    max_side = require_int(max_side, "max_side", minimum=min_side, maximum=size // 2)
    yy = torch.arange(size).view(1, 1, size, 1)  # (1, 1, I, 1): row index
    xx = torch.arange(size).view(1, 1, 1, size)  # (1, 1, 1, I): column index
    kept, have = [], 0
    for _ in range(100):
        k = 4 * n
        s = torch.randint(min_side, max_side + 1, (k, 2, 1, 1), generator=generator)  # (k, 2, 1, 1) sides
        r = (torch.rand(k, 2, 1, 1, generator=generator) * (size - s + 1)).floor()  # top rows
        c = (torch.rand(k, 2, 1, 1, generator=generator) * (size - s + 1)).floor()  # left columns
        disk = torch.rand(k, 2, 1, 1, generator=generator) < 0.5
        inside = (yy >= r) & (yy < r + s) & (xx >= c) & (xx < c + s)  # (k, 2, I, I): the boxes
        round_ = (yy - r - (s - 1) / 2) ** 2 + (xx - c - (s - 1) / 2) ** 2 <= (s / 2) ** 2
        inside &= ~disk | round_  # a disk keeps the pixels of its box within radius s/2 of the centre
        near = (yy >= r - 1) & (yy < r + s + 1) & (xx >= c - 1) & (xx < c + s + 1)  # each box grown by 1
        apart = ~(inside[:, 1] & near[:, 0]).any((1, 2))  # (k,): shape 1 keeps a pixel away from box 0
        area = inside.sum((2, 3)).float()  # (k, 2)
        lo, hi = area.min(1).values, area.max(1).values
        good = apart & (hi >= min_ratio * lo) & (hi <= max_ratio * lo)
        kept.append(inside[good])
        have += int(good.sum())
        if have >= n:
            break
    else:
        raise ValueError(f"make_shape_pairs: too few pairs of sides {min_side}-{max_side} fit apart in "
                         f"{size}x{size} with an area ratio in [{min_ratio}, {max_ratio}]")
    shapes = torch.cat(kept)[:n]  # (N, 2, I, I)
    areas = shapes.sum((2, 3))  # (N, 2)
    larger = shapes[torch.arange(n), areas.argmax(1)]  # (N, I, I)
    return ShapePairs(shapes.any(1, keepdim=True).float(), shapes, larger, areas)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks ``(N, I, I)``: ``|pred & target| / |pred | target|`` per image, ``(N,)``."""
    inter = (pred & target).sum((1, 2)).float()
    union = (pred | target).sum((1, 2)).float()
    return inter / union.clamp(min=1)


@dataclass
class SegmentationResult:
    iou: dict[str, float]  # mean IoU with the larger shape's mask ("attention", "per-patch")
    foreground_iou: dict[str, float]  # mean IoU with both shapes' pixels: are the shapes found at all?
    both_shapes_iou: float  # IoU with the target of marking both shapes (what "find shapes, not sizes" scores)
    params: dict[str, int]
    predictions: dict[str, torch.Tensor]  # (N, I, I) bool test masks
    data: ShapePairs  # the test images
    seconds: float


def run_segmentation(steps: int = 300, lr: float = 5e-3, train_size: int = 1500, test_size: int = 300,
                     seed: int = 0, progress: bool = True) -> SegmentationResult:
    """The ViT segmenter with attention vs the same blocks without it, on 8x8 shape pairs (2x2 patches)."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_shape_pairs(train_size, g), make_shape_pairs(test_size, g)
    y_tr = train.larger.long()  # (N, I, I): class 1 = the larger shape
    foreground = test.shapes.any(1)  # (N, I, I)
    iou, fg_iou, params, preds = {}, {}, {}, {}
    with num_threads(1):
        for name, attention in (("attention", True), ("per-patch", False)):
            torch.manual_seed(seed)
            model = ViTSegmenter(ViTConfig(num_classes=2), attention=attention)
            fit(model, lambda i, m=model: F.cross_entropy(m(train.images[i])[0], y_tr[i]), train_size, steps,
                lr=lr, seed=seed, desc=f"segmenter ({name})", progress=progress)
            with torch.no_grad():
                pred = model(test.images)[0].argmax(1).bool()  # (N, I, I)
            iou[name] = mask_iou(pred, test.larger).mean().item()
            fg_iou[name] = mask_iou(pred, foreground).mean().item()
            params[name], preds[name] = sum(p.numel() for p in model.parameters()), pred
    both = mask_iou(foreground, test.larger).mean().item()
    return SegmentationResult(iou, fg_iou, both, params, preds, test, time.perf_counter() - start)


def plot_segmentation(result: SegmentationResult, count: int = 6):
    """Test images, the true mask of the larger shape, and each model's predicted mask."""
    rows = [("image", result.data.images[:, 0]), ("target", result.data.larger),
            ("with attention", result.predictions["attention"]), ("no attention", result.predictions["per-patch"])]
    fig, axes = plt.subplots(len(rows), count, figsize=(1.45 * count, 1.5 * len(rows)))
    for r, (title, masks) in enumerate(rows):
        for k in range(count):
            ax = axes[r, k]
            ax.imshow(masks[k].float().numpy(), cmap="gray_r" if r == 0 else "Purples", vmin=0, vmax=1)
            if r >= 2:
                iou = mask_iou(masks[k:k + 1], result.data.larger[k:k + 1]).item()
                ax.set_title(f"IoU {iou:.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("Segment the larger shape: attention compares the two shapes, a lone patch cannot", fontsize=10)
    fig.tight_layout()
    return fig

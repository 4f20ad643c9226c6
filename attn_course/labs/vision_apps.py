"""Chapter 12's experiments: a tiny ViT on the digits, fine-grained parts, object queries.

Each run trains the attention model and its baseline without attention on the same data with the
same budget and returns the numbers the chapter asserts and the weights it draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ..apps.vision import (
    CNNClassifier,
    MLPClassifier,
    ObjectQueryDetector,
    PooledCNN,
    SpatialCaptioner,
    VisionTransformer,
    box_iou,
    caption_tokens,
    caption_vocab,
    hungarian_match,
    load_digits,
    make_part_images,
    make_scenes,
)
from ..utils import num_threads, seed_everything
from .training import fit

__all__ = [
    "num_params",
    "DigitsResult",
    "run_digits",
    "plot_cls_attention",
    "PartsResult",
    "run_parts",
    "plot_part_attention",
    "CaptionResult",
    "run_captions",
    "plot_caption_attention",
    "DetectionResult",
    "run_detection",
    "plot_detections",
]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- ViT on digits


@dataclass
class DigitsResult:
    accuracy: dict[str, float]  # test accuracy ("vit", "mlp", "cnn")
    params: dict[str, int]
    cls_attention: torch.Tensor  # (N, 4, 4): last block's class-token attention over the patches, heads averaged
    images: torch.Tensor  # (N, 1, 8, 8) test images
    labels: torch.Tensor
    seconds: float


def run_digits(steps: int = 400, seed: int = 0, mlp_hidden: int = 128, progress: bool = True) -> DigitsResult:
    """The tiny ViT (16 patches of 2x2) vs an MLP and a small CNN of about the same number of parameters.

    All three get the same steps, batches and learning rate (``fit``'s Adam).
    """
    start = time.perf_counter()
    seed_everything(seed)
    x_tr, y_tr, x_te, y_te = load_digits(seed)
    acc, params = {}, {}
    with num_threads(1):
        torch.manual_seed(seed)
        vit = VisionTransformer()
        models = {"vit": vit, "mlp": MLPClassifier(64, mlp_hidden, 10), "cnn": CNNClassifier()}
        for name, model in models.items():
            f = (lambda x, m=model: m(x)[0]) if name == "vit" else model
            fit(model, lambda i, f=f: F.cross_entropy(f(x_tr[i]), y_tr[i]), len(y_tr), steps, seed=seed,
                desc=name, progress=progress)
            with torch.no_grad():
                acc[name] = (f(x_te).argmax(-1) == y_te).float().mean().item()
            params[name] = num_params(model)
        with torch.no_grad():
            _, maps = vit(x_te)
    cls = maps[-1].mean(1)[:, 0, 1:].reshape(-1, 4, 4)  # (N, H, 17, 17) -> class token row -> (N, 4, 4)
    return DigitsResult(acc, params, cls, x_te, y_te, time.perf_counter() - start)


def plot_cls_attention(result: DigitsResult, count: int = 6):
    """Test digits (top) and the class token's attention over their 4x4 patches (bottom)."""
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6))
    for k in range(count):
        axes[0, k].imshow(result.images[k, 0], cmap="gray_r")
        axes[0, k].set_title(f"digit {int(result.labels[k])}", fontsize=9)
        axes[1, k].imshow(result.cls_attention[k], cmap="Purples", vmin=0)
        for ax in axes[:, k]:
            ax.set_axis_off()
    fig.suptitle("Class-token attention over the 4x4 grid of 2x2 patches (last block, heads averaged)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- fine-grained parts


@dataclass
class PartsResult:
    accuracy: dict[str, float]  # test accuracy on large images ("attention", "mean")
    part_weight: float  # mean attention weight inside the 3x3 part (test set); a uniform map gives 9 / side^2
    uniform_part_weight: float
    weights: torch.Tensor  # (N, side, side)
    images: torch.Tensor
    labels: torch.Tensor
    seconds: float


def run_parts(steps: int = 250, train_size: int = 12, test_size: int = 24, seed: int = 0,
              progress: bool = True) -> PartsResult:
    """Attention pooling vs global average pooling over the same convolutional features.

    Both are trained on small images and tested on larger ones, where the part is a smaller share
    of the picture (as a bird's beak is in a photo taken from farther away).
    """
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr, _ = make_part_images(2000, g, size=train_size)
    x_te, y_te, part = make_part_images(400, g, size=test_size)
    acc, weights = {}, None
    with num_threads(1):
        for pooling in ("attention", "mean"):
            torch.manual_seed(seed)
            model = PooledCNN(pooling=pooling)
            fit(model, lambda i, m=model: F.cross_entropy(m(x_tr[i])[0], y_tr[i]), len(y_tr), steps, seed=seed,
                desc=f"{pooling} pooling", progress=progress)
            with torch.no_grad():
                logits, w = model(x_te)
            acc[pooling] = (logits.argmax(-1) == y_te).float().mean().item()
            if pooling == "attention":
                weights = w
    part_weight = (weights * part).sum((1, 2)).mean().item()
    return PartsResult(acc, part_weight, 9 / test_size**2, weights, x_te, y_te, time.perf_counter() - start)


def plot_part_attention(result: PartsResult, count: int = 4):
    """Test images (top) and where attention pooling looks (bottom)."""
    fig, axes = plt.subplots(2, count, figsize=(2.0 * count, 4.2))
    for k in range(count):
        axes[0, k].imshow(result.images[k, 0], cmap="gray_r")
        axes[0, k].set_title("class " + ("\\" if int(result.labels[k]) == 0 else "/"), fontsize=9)
        axes[1, k].imshow(result.weights[k], cmap="Purples")
        for ax in axes[:, k]:
            ax.set_axis_off()
    axes[1, 0].set_title("attention weights", fontsize=9)
    fig.suptitle("Fine-grained: the class is the orientation of one small stroke", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- captioning


@dataclass
class CaptionResult:
    word_accuracy: dict[str, float]  # greedy captions, share of words right ("attention", "mean")
    caption_accuracy: dict[str, float]  # share of captions entirely right
    in_region: float  # mean attention weight inside the box of the shape each word describes
    region_share: float  # the share of the grid those boxes cover (a uniform map's weight there)
    in_region_by_word: dict[str, float]  # in_region over the words generated right and those generated wrong
    wrong_on_other: float  # the wrong words' mean weight inside the box of the other shape
    order_right: dict[str, float]  # of the captions naming both (colour, shape) pairs right, the share in the right order
    words: torch.Tensor  # (N, T) greedy captions of the attention model
    weights: torch.Tensor  # (N, T, h, w)
    scenes: object
    seconds: float


def _box_cells(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """``(..., 4)`` boxes -> ``(..., side, side)`` bool: the grid cells whose centre lies in the box."""
    c = (torch.arange(side) + 0.5) / side
    x0, y0 = boxes[..., 0] - boxes[..., 2] / 2, boxes[..., 1] - boxes[..., 3] / 2
    x1, y1 = x0 + boxes[..., 2], y0 + boxes[..., 3]
    inx = (c >= x0[..., None]) & (c <= x1[..., None])  # (..., side)
    iny = (c >= y0[..., None]) & (c <= y1[..., None])
    return iny[..., :, None] & inx[..., None, :]


def run_captions(steps: int = 400, lr: float = 1e-2, seed: int = 0, progress: bool = True) -> CaptionResult:
    """Captions "colour shape colour shape" (left to right) with spatial attention vs a mean-feature decoder."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_scenes(2000, g, random_colors=True), make_scenes(300, g, random_colors=True)
    y_tr, _ = caption_tokens(train)
    y_te, obj = caption_tokens(test)
    V, T = len(caption_vocab()), y_te.shape[1]
    words_acc, caps_acc, order, keep = {}, {}, {}, None
    with num_threads(1):
        for name, attention in (("attention", True), ("mean", False)):
            torch.manual_seed(seed)
            model = SpatialCaptioner(V, attention=attention)

            def loss(i, m=model):
                return F.cross_entropy(m(train.images[i], y_tr[i])[0].flatten(0, 1), y_tr[i].flatten())

            fit(model, loss, len(y_tr), steps, lr=lr, seed=seed, desc=f"captioner ({name})", progress=progress)
            words, w = model.caption(test.images, T)
            words_acc[name] = (words == y_te).float().mean().item()
            caps_acc[name] = (words == y_te).all(-1).float().mean().item()
            order[name] = _order_right(words, y_te)
            if attention:
                side = int(w.shape[-1] ** 0.5)
                keep = (words, w.view(*w.shape[:2], side, side))
    words, w = keep
    side = w.shape[-1]
    region = _box_cells(test.boxes.gather(1, obj[..., None].expand(-1, -1, 4)), side)  # (N, T, side, side)
    inside = (w * region).sum((-1, -2))  # (N, T): each word's weight inside its shape's box
    other = _box_cells(test.boxes.gather(1, (1 - obj)[..., None].expand(-1, -1, 4)), side)  # two shapes: the other
    right = words == y_te  # (N, T)
    by_word = {"right": inside[right].mean().item(), "wrong": inside[~right].mean().item()}
    on_other = (w * other).sum((-1, -2))[~right].mean().item()
    share = region.float().mean().item()
    return CaptionResult(words_acc, caps_acc, inside.mean().item(), share, by_word, on_other, order, words, w,
                         test, time.perf_counter() - start)


def _order_right(words: torch.Tensor, target: torch.Tensor) -> float:
    """Of the captions whose (colour, shape) pairs are the right ones, in either order, the share in the right order.

    Captions whose two pairs are the same words are left out: their order cannot be wrong.
    """
    p, t = words.view(len(words), -1, 2), target.view(len(target), -1, 2)  # (N, M, 2): one (colour, shape) per object
    same = (p == t).all((1, 2))  # (N,)
    swapped = (p == t.flip(1)).all((1, 2))
    distinct = ~(t[:, 0] == t[:, 1]).all(-1)
    named = (same | swapped) & distinct
    return (same & named).sum().item() / max(int(named.sum()), 1)


def plot_caption_attention(result: CaptionResult, index: int = 0):
    """One scene, then each generated word with its attention over the image."""
    s = result.scenes
    vocab = caption_vocab()
    T = result.words.shape[1]
    fig, axes = plt.subplots(1, 1 + T, figsize=(2.2 * (1 + T), 2.6))
    image = s.images[index].permute(1, 2, 0).clamp(0, 1)
    size = image.shape[0]
    axes[0].imshow(image)
    axes[0].set_title("scene", fontsize=9)
    for t in range(T):
        axes[1 + t].imshow(image)
        axes[1 + t].imshow(result.weights[index, t], cmap="magma", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        axes[1 + t].set_title(f"word {t + 1}: {vocab[int(result.words[index, t])]}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Each caption word attends to its shape (brighter = more weight)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- detection


@dataclass
class DetectionResult:
    iou: dict[str, float]  # mean IoU of the matched prediction per object ("attention", "global")
    recall: dict[str, float]  # share of objects whose matched query has the right class and IoU >= 0.5
    class_accuracy: dict[str, float]  # share of objects whose matched query has the right class
    extra: dict[str, float]  # per image: unmatched queries that still predict an object (false positives)
    to_object: dict[str, float]  # mean distance (pixels) of a matched box's centre from the nearest object's centre
    to_midpoint: dict[str, float]  # ... and from the midpoint between the two objects' centres
    own_box: float  # attention model: a matched query's weight inside its object's box
    other_box: float  # ... inside the other object's box
    box_share: float  # the share of the grid an object's box covers (a uniform map's weight there)
    weights: torch.Tensor  # (N, Q, h, w) cross-attention of each object query
    boxes: torch.Tensor  # (N, Q, 4) predicted boxes
    classes: torch.Tensor  # (N, Q) predicted classes (K = no object)
    match: torch.Tensor  # (N, M) the query matched to each object
    scenes: object
    seconds: float


def detection_loss(cls, boxes, tgt_cls, tgt_boxes, no_object_weight: float = 0.2):
    """DETR's loss after Hungarian matching: cross-entropy (unmatched queries -> "no object") + L1 on boxes."""
    match = hungarian_match(cls, boxes, tgt_cls, tgt_boxes)  # (B, M)
    B, Q, K1 = cls.shape
    target = torch.full((B, Q), K1 - 1, dtype=torch.long)
    rows = torch.arange(B)[:, None]
    target[rows, match] = tgt_cls
    weight = torch.ones(K1)
    weight[-1] = no_object_weight
    ce = F.cross_entropy(cls.flatten(0, 1), target.flatten(), weight=weight)
    return ce + 5 * F.l1_loss(boxes[rows, match], tgt_boxes)


def run_detection(steps: int = 400, seed: int = 0, progress: bool = True) -> DetectionResult:
    """Object queries with cross-attention vs the same queries reading one global mean feature.

    Each object is scored through its matched query: the Hungarian matching of the test
    predictions to the true objects (an oracle: it uses the answer), as during training. So
    ``recall`` is recall under that matching, not DETR's average precision, which ranks every
    prediction by confidence and counts the unmatched ones as false positives (``extra``).
    """
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_scenes(2000, g), make_scenes(300, g)
    size = test.images.shape[-1]
    centres = test.boxes[..., :2] * size  # (N, M, 2) in pixels
    midpoint = centres.mean(1, keepdim=True)  # (N, 1, 2)
    stat = {k: {} for k in ("iou", "recall", "cls", "extra", "obj", "mid")}
    keep = None
    with num_threads(1):
        for name, attention in (("attention", True), ("global", False)):
            torch.manual_seed(seed)
            model = ObjectQueryDetector(attention=attention)

            def loss(i, m=model):
                cls, boxes, _ = m(train.images[i])
                return detection_loss(cls, boxes, train.classes[i], train.boxes[i])

            fit(model, loss, len(train.classes), steps, seed=seed, desc=f"detector ({name})", progress=progress)
            with torch.no_grad():
                cls, boxes, w = model(test.images)
            match = hungarian_match(cls, boxes, test.classes, test.boxes)  # (N, M)
            rows = torch.arange(len(match))[:, None]
            ious = box_iou(boxes[rows, match], test.boxes)  # (N, M)
            right = cls[rows, match].argmax(-1) == test.classes
            unmatched = torch.ones(cls.shape[:2], dtype=torch.bool)  # (N, Q)
            unmatched[rows, match] = False
            centre = boxes[rows, match][..., :2] * size  # (N, M, 2): the matched boxes' centres
            stat["iou"][name], stat["recall"][name] = ious.mean().item(), ((ious >= 0.5) & right).float().mean().item()
            stat["cls"][name] = right.float().mean().item()
            stat["extra"][name] = ((cls.argmax(-1) != cls.shape[-1] - 1) & unmatched).sum(1).float().mean().item()
            stat["obj"][name] = torch.cdist(centre, centres).min(-1).values.mean().item()
            stat["mid"][name] = (centre - midpoint).norm(dim=-1).mean().item()
            if attention:
                side = int(w.shape[-1] ** 0.5)
                keep = (w.view(*w.shape[:2], side, side), boxes, cls.argmax(-1), match)
    weights, match = keep[0], keep[3]
    cells = _box_cells(test.boxes, weights.shape[-1])  # (N, M, side, side)
    read = weights[torch.arange(len(match))[:, None], match]  # (N, M, side, side): each object's query
    own = (read * cells).sum((-1, -2)).mean().item()
    other = (read * cells.flip(1)).sum((-1, -2)).mean().item()  # M = 2: the other object's box
    return DetectionResult(stat["iou"], stat["recall"], stat["cls"], stat["extra"], stat["obj"], stat["mid"], own,
                           other, cells.float().mean().item(), *keep, test, time.perf_counter() - start)


def plot_detections(result: DetectionResult, index: int = 0):
    """One test scene with its boxes, then each matched query's cross-attention map."""
    s = result.scenes
    M = s.classes.shape[1]
    fig, axes = plt.subplots(1, 1 + M, figsize=(2.6 * (1 + M), 2.8))
    size = s.images.shape[-1]
    axes[0].imshow(s.images[index].permute(1, 2, 0).clamp(0, 1))
    for m in range(M):
        q = int(result.match[index, m])
        cx, cy, w, h = (result.boxes[index, q] * size).tolist()
        axes[0].add_patch(plt.Rectangle((cx - w / 2 - 0.5, cy - h / 2 - 0.5), w, h, fill=False,
                                        edgecolor="white", lw=2, ls="--"))
        axes[0].text(cx - w / 2 - 0.5, cy - h / 2 - 1, f"query {q}", color="black", fontsize=8)
        axes[1 + m].imshow(result.weights[index, q], cmap="Purples")
        axes[1 + m].set_title(f"query {q}: {s.class_names[int(s.classes[index, m])]}", fontsize=9)
    axes[0].set_title("predicted boxes (dashed)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Object queries: each one attends to its own object", fontsize=10)
    fig.tight_layout()
    return fig

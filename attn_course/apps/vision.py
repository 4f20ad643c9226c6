"""Attention in vision: a tiny Vision Transformer, attention pooling over a feature map, object queries.

* ``PatchEmbedding`` + ``VisionTransformer`` (Dosovitskiy et al., 2021): the image is cut into
  ``P x P`` patches, each patch becomes a token, a learned class token is prepended, learned
  positional embeddings are added, and the library's ``TransformerBlock`` (pre-norm) does the
  rest; the class token's final state is classified. ``load_timm_weights`` copies a
  ``timm`` ``VisionTransformer`` of the same shape into ours (the logits agree).
* ``CNNClassifier``: the convolutional baseline (the ViT paper's comparison is against ResNets):
  locality and weight sharing built in, where the ViT and the ``MLPClassifier`` have neither.
* ``ViTSegmenter``: a linear decoder on ViT patch tokens (Segmenter, Strudel et al., 2021, maps
  each patch token to class logits and upsamples them bilinearly; ours has the linear head give
  the logits of the patch's ``P x P`` pixels directly): the ViT's patches, positions and blocks,
  no class token. ``attention=False`` keeps only the blocks' MLP sublayers: each patch is
  labelled from its own pixels and position alone.
* ``PooledCNN``: a small convolutional feature map pooled by the library-based
  ``AttentionPooling`` (from ``apps.text``) or by global average pooling, for fine-grained
  recognition, with ``make_part_images``.
* ``ObjectQueryDetector`` (DETR, Carion et al., 2020): learned object queries cross-attend to the
  feature map (the library's ``MultiHeadAttention`` with ``kdim``) and each predicts one box and
  class; ``hungarian_match`` pairs predictions and targets (scipy's ``linear_sum_assignment``).

Dimension glossary: B batch, C image channels, I image side (pixels), P patch side, N = (I/P)^2
patches, D model width, H heads, K classes, Q object queries, M objects in a scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validation import require_floating, require_int, shape_error
from ..multihead import MultiHeadAttention
from ..transformer import TransformerBlock, TransformerConfig
from ..utils import require_package
from .text import AttentionPooling

__all__ = [
    "ViTConfig",
    "PatchEmbedding",
    "VisionTransformer",
    "MLPClassifier",
    "CNNClassifier",
    "ViTSegmenter",
    "load_timm_weights",
    "load_digits",
    "PooledCNN",
    "make_part_images",
    "Scenes",
    "make_scenes",
    "ObjectQueryDetector",
    "caption_tokens",
    "caption_vocab",
    "SpatialCaptioner",
    "hungarian_match",
    "box_iou",
]


# ----------------------------------------------------------------------------- the Vision Transformer


@dataclass
class ViTConfig:
    """A tiny ViT: the defaults fit scikit-learn's 8x8 digits (16 patches of 2x2)."""

    img_size: int = 8  # I: the image side in pixels (square images)
    patch_size: int = 2  # P: the patch side; I must be a multiple of P
    in_chans: int = 1  # C: image channels
    num_classes: int = 10  # K
    embed_dim: int = 32  # D
    depth: int = 2  # Transformer blocks
    num_heads: int = 2  # H; must divide D
    mlp_ratio: float = 4.0  # the MLP's hidden width is mlp_ratio * D (as in ViT and timm)
    norm_eps: float = 1e-6  # LayerNorm epsilon: ViT's and timm's 1e-6 (torch's default is 1e-5)

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            require_int(getattr(self, name), f"ViTConfig.{name}")
        if self.img_size % self.patch_size:
            raise ValueError(f"ViTConfig: img_size ({self.img_size}) must be a multiple of patch_size "
                             f"({self.patch_size}) so the patches tile the image")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig: embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


class PatchEmbedding(nn.Module):
    """Cut ``(B, C, I, I)`` images into ``P x P`` patches and project each to ``D``: ``(B, N, D)``.

    A convolution with kernel = stride = ``P`` is exactly "flatten each patch, multiply by one
    matrix": every output position sees one patch and no other (timm's ``PatchEmbed`` does the same).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_floating(images, "images")
        side, C = self.img_size, self.in_chans
        if images.dim() != 4 or tuple(images.shape[1:]) != (C, side, side):
            raise shape_error("images", images, f"(B, {C}, {side}, {side})")
        x = self.proj(images)  # (B, D, I/P, I/P): one vector per patch
        return x.flatten(2).transpose(1, 2)  # (B, D, N) -> (B, N, D), patches in row-major order


class VisionTransformer(nn.Module):
    """Patches -> tokens, class token, positions, Transformer blocks, classify the class token.

    ``forward`` returns ``(logits (B, K), attention)`` where ``attention`` is the list of every
    block's weights ``(B, H, 1 + N, 1 + N)`` (token 0 is the class token).
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or ViTConfig()
        self.patch_embed = PatchEmbedding(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))  # learned: it gathers the image
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + c.num_patches, c.embed_dim) * 0.02)  # learned positions
        block = TransformerConfig(d_model=c.embed_dim, num_heads=c.num_heads, num_layers=c.depth,
                                  d_ff=int(c.embed_dim * c.mlp_ratio), norm_first=True, activation="gelu")
        self.blocks = nn.ModuleList(TransformerBlock(block) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        for b in self.blocks:  # the library block uses torch's default eps; ViT uses 1e-6
            b.norm1.eps = b.norm2.eps = c.norm_eps
        self.head = nn.Linear(c.embed_dim, c.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(images)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], 1) + self.pos_embed  # (B, 1 + N, D)
        maps = []
        for block in self.blocks:
            x, w = block(x)  # (B, 1 + N, D), (B, H, 1 + N, 1 + N)
            maps.append(w)
        return self.head(self.norm(x)[:, 0]), maps  # (B, K)


class MLPClassifier(nn.Module):
    """The baseline without attention: flatten the image, two hidden layers, classify."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class CNNClassifier(nn.Module):
    """The convolutional baseline: two 3x3 convolutions, 2x2 max-pooling, two linear layers.

    Each convolution sees a 3x3 neighbourhood and shares its weights across the image: locality
    and translation equivariance are built in, where the ViT and the MLP must learn them.
    """

    def __init__(self, side: int = 8, in_chans: int = 1, channels: int = 16, hidden: int = 88,
                 num_classes: int = 10) -> None:
        super().__init__()
        side = require_int(side, "side", minimum=2)
        self.net = nn.Sequential(nn.Conv2d(in_chans, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(),  # (B, channels * (side // 2)^2)
                                 nn.Linear(channels * (side // 2) ** 2, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, K)


class ViTSegmenter(nn.Module):
    """Per-pixel classes from a ViT's patch tokens: ``(B, C, I, I)`` -> ``(logits (B, K, I, I), attention)``.

    The encoder is the ViT's (patch embedding, learned positions, pre-norm blocks) without the
    class token: every patch token is kept. A linear head maps each final token to ``K * P * P``
    logits, the classes of its own ``P x P`` pixels, which are put back in place. With
    ``attention=False`` each block keeps only its MLP sublayer (the baseline without attention):
    the same parameters and head, but a patch never sees another patch. ``attention`` is the list
    of every block's weights ``(B, H, N, N)`` (empty without attention).
    """

    def __init__(self, config: ViTConfig | None = None, attention: bool = True) -> None:
        super().__init__()
        c = self.config = config or ViTConfig(num_classes=2)
        self.attention = attention
        self.patch_embed = PatchEmbedding(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, c.num_patches, c.embed_dim) * 0.02)  # (1, N, D)
        block = TransformerConfig(d_model=c.embed_dim, num_heads=c.num_heads, num_layers=c.depth,
                                  d_ff=int(c.embed_dim * c.mlp_ratio), norm_first=True, activation="gelu")
        self.blocks = nn.ModuleList(TransformerBlock(block) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        for b in self.blocks:
            b.norm1.eps = b.norm2.eps = c.norm_eps
        self.head = nn.Linear(c.embed_dim, c.num_classes * c.patch_size**2)  # the linear decoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(images) + self.pos_embed  # (B, N, D)
        maps = []
        for block in self.blocks:
            if self.attention:
                x, w = block(x)  # (B, N, D), (B, H, N, N): every patch reads every other
                maps.append(w)
            else:
                x = x + block.mlp(block.norm2(x))  # (B, N, D): the MLP sublayer alone, patch by patch
        return self.unpatchify(self.head(self.norm(x))), maps  # (B, K, I, I)

    def unpatchify(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, N, K * P * P)`` per-patch logits -> ``(B, K, I, I)``: each patch's pixels back in place."""
        c, B = self.config, logits.shape[0]
        g, P, K = c.img_size // c.patch_size, c.patch_size, c.num_classes
        x = logits.view(B, g, g, K, P, P)  # (B, patch row, patch col, K, pixel row, pixel col)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(B, K, g * P, g * P)  # (B, K, g, P, g, P) -> (B, K, I, I)


@torch.no_grad()
def load_timm_weights(model: VisionTransformer, timm_model: nn.Module) -> VisionTransformer:
    """Copy a ``timm.models.vision_transformer.VisionTransformer`` of the same shape into ``model``.

    timm packs the three input projections into one ``qkv`` Linear ``(3D, D)``: rows ``0:D`` are
    ``W_Q``, ``D:2D`` ``W_K``, ``2D:3D`` ``W_V``; its ``proj`` is our ``out_proj``.
    """
    D = model.config.embed_dim
    model.patch_embed.proj.load_state_dict(timm_model.patch_embed.proj.state_dict())
    model.cls_token.copy_(timm_model.cls_token)
    model.pos_embed.copy_(timm_model.pos_embed)
    if len(timm_model.blocks) != len(model.blocks):
        raise ValueError(f"depth differs: timm has {len(timm_model.blocks)} blocks, ours {len(model.blocks)}")
    for ours, theirs in zip(model.blocks, timm_model.blocks):
        ours.norm1.load_state_dict(theirs.norm1.state_dict())
        ours.norm2.load_state_dict(theirs.norm2.state_dict())
        w, b = theirs.attn.qkv.weight, theirs.attn.qkv.bias  # (3D, D), (3D,)
        for i, proj in enumerate((ours.attn.q_proj, ours.attn.k_proj, ours.attn.v_proj)):
            proj.weight.copy_(w[i * D:(i + 1) * D])  # (D, D)
            proj.bias.copy_(b[i * D:(i + 1) * D])
        ours.attn.out_proj.load_state_dict(theirs.attn.proj.state_dict())
        ours.mlp.fc1.load_state_dict(theirs.mlp.fc1.state_dict())
        ours.mlp.fc2.load_state_dict(theirs.mlp.fc2.state_dict())
    model.norm.load_state_dict(timm_model.norm.state_dict())
    model.head.load_state_dict(timm_model.head.state_dict())
    return model


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 8x8 digits (shipped with the package, no download) as ``(x_train, y_train, x_test, y_test)``.

    Images are ``(N, 1, 8, 8)`` scaled to [0, 1]; the split is random but fixed by ``seed``.
    """
    datasets = require_package("sklearn.datasets", "scikit-learn", "load_digits")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


# ----------------------------------------------------------------------------- fine-grained recognition


class PooledCNN(nn.Module):
    """Two convolutions give a feature map; attention pooling (or the global mean) summarises it.

    Returns ``(logits (B, K), weights (B, h, w))``: where the pooled vector comes from.
    """

    def __init__(self, num_classes: int = 2, dim: int = 16, pooling: str = "attention") -> None:
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.features = nn.Sequential(nn.Conv2d(1, dim, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU())
        self.pool = AttentionPooling(dim) if pooling == "attention" else None
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)  # (B, D, h, w)
        B, D, h, w = f.shape
        x = f.flatten(2).transpose(1, 2)  # (B, h*w, D): one token per pixel of the map
        if self.pool is None:
            pooled, weights = x.mean(1), torch.full((B, h * w), 1.0 / (h * w))  # (B, D), (B, h*w)
        else:
            pooled, weights = self.pool(x)  # (B, D), (B, h*w)
        return self.head(pooled), weights.view(B, h, w)  # (B, K), (B, h, w)


# the two parts: the same pixels, arranged differently (a "\" stroke or a "/" stroke)
_PARTS = (torch.eye(3), torch.eye(3).flip(1))


def make_part_images(n: int, generator: torch.Generator, size: int = 16, noise: float = 0.15,
                     blobs: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose class is only the orientation of one small 3x3 stroke; returns ``(images, labels, part_mask)``.

    Each image has a few bright 3x3 blobs (the same for both classes) and one 3x3 stroke, ``\\``
    for class 0 and ``/`` for class 1, at a random place, on noise. Both strokes have the same
    pixels and brightness, so only the part's arrangement tells the classes apart.
    ``part_mask (n, size, size)`` marks the stroke.
    """
    n, size = require_int(n, "n"), require_int(size, "size", minimum=8)
    images = noise * torch.rand(n, 1, size, size, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    part = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(blobs):
            r, c = torch.randint(0, size - 2, (2,), generator=generator).tolist()
            images[i, 0, r:r + 3, c:c + 3] += 0.5
        r, c = torch.randint(0, size - 2, (2,), generator=generator).tolist()
        images[i, 0, r:r + 3, c:c + 3] += _PARTS[int(labels[i])]
        part[i, r:r + 3, c:c + 3] = True
    return images.clamp(0, 1.5), labels, part


# ----------------------------------------------------------------------------- detection with object queries


@dataclass
class Scenes:
    images: torch.Tensor  # (N, 3, I, I)
    boxes: torch.Tensor  # (N, M, 4) (cx, cy, w, h) in [0, 1]
    classes: torch.Tensor  # (N, M) shape class ids
    class_names: list[str]
    colors: torch.Tensor  # (N, M) colour ids (the class's own colour unless random_colors)
    color_names: list[str]


SHAPES = ["square", "disk", "cross"]
COLORS = ["red", "blue", "green"]
_RGB = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.5, 0.9], [0.2, 0.8, 0.3]])


def make_scenes(n: int, generator: torch.Generator, size: int = 16, objects: int = 2,
                min_side: int = 4, max_side: int = 7, random_colors: bool = False) -> Scenes:
    """Scenes of ``objects`` non-overlapping shapes (square, disk, cross).

    Each shape has its class's colour, or a random one of the three with ``random_colors``
    (for captions, where colour and shape are separate words). Boxes are ``(cx, cy, w, h)`` as
    fractions of the image side (DETR's convention).
    """
    n, size, M = require_int(n, "n"), require_int(size, "size", minimum=8), require_int(objects, "objects")
    images = torch.zeros(n, 3, size, size)
    boxes, classes = torch.zeros(n, M, 4), torch.zeros(n, M, dtype=torch.long)
    colors = torch.zeros(n, M, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        taken = torch.zeros(size, size, dtype=torch.bool)
        for m in range(M):
            for _ in range(100):  # rejection sampling: a place that does not overlap
                s = int(torch.randint(min_side, max_side + 1, (1,), generator=generator))
                r, c = torch.randint(0, size - s + 1, (2,), generator=generator).tolist()
                if not taken[max(r - 1, 0):r + s + 1, max(c - 1, 0):c + s + 1].any():
                    break
            k = int(torch.randint(0, len(SHAPES), (1,), generator=generator))
            inside = (yy >= r) & (yy < r + s) & (xx >= c) & (xx < c + s)
            cy, cx, rad = r + (s - 1) / 2, c + (s - 1) / 2, s / 2
            if k == 1:
                inside &= (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
            elif k == 2:
                inside &= ((yy - cy).abs() <= s / 6 + 0.5) | ((xx - cx).abs() <= s / 6 + 0.5)
            col = int(torch.randint(0, len(COLORS), (1,), generator=generator)) if random_colors else k
            images[i, :, inside] = _RGB[col][:, None]
            colors[i, m] = col
            taken[r:r + s, c:c + s] = True
            boxes[i, m] = torch.tensor([(c + s / 2) / size, (r + s / 2) / size, s / size, s / size])
            classes[i, m] = k
    return Scenes(images, boxes, classes, list(SHAPES), colors, list(COLORS))


class ObjectQueryDetector(nn.Module):
    """A tiny DETR: a conv feature map, ``Q`` learned object queries that cross-attend to it, one box each.

    ``attention=False`` is the baseline without attention: every query reads the same global
    mean of the feature map. Returns ``(class_logits (B, Q, K + 1), boxes (B, Q, 4), weights
    (B, Q, h*w))``; the extra class ``K`` is "no object".
    """

    def __init__(self, num_classes: int = 3, num_queries: int = 4, dim: int = 32, heads: int = 1,
                 image_size: int = 16, attention: bool = True) -> None:
        super().__init__()
        self.attention = attention
        self.backbone = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(dim, dim, 3, padding=1, stride=2), nn.ReLU())
        side = (image_size + 1) // 2
        self.pos = nn.Parameter(torch.randn(1, side * side, dim) * 0.1)  # where each feature sits
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))  # learned object queries
        self.cross = MultiHeadAttention(dim, heads)  # queries attend to the feature map
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.cls = nn.Linear(dim, num_classes + 1)
        self.box = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))

    def forward(self, images: torch.Tensor):
        f = self.backbone(images)  # (B, D, h, w)
        B, D = f.shape[:2]
        memory = f.flatten(2).transpose(1, 2) + self.pos  # (B, h*w, D)
        q = self.queries.expand(B, -1, -1)  # (B, Q, D)
        if self.attention:
            read, w = self.cross(q, memory, memory)  # (B, Q, D), (B, H, Q, h*w)
            w = w.mean(1)  # (B, Q, h*w): averaged over heads
        else:
            read = memory.mean(1, keepdim=True).expand_as(q)  # (B, Q, D): the same for every query
            w = torch.full((B, q.shape[1], memory.shape[1]), 1.0 / memory.shape[1])
        x = self.norm(q + read)
        x = x + self.mlp(x)  # (B, Q, D)
        return self.cls(x), self.box(x).sigmoid(), w


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching ``(..., 4)`` boxes in ``(cx, cy, w, h)``: ``(...)``."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(-1)
    return inter / (a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter)


@torch.no_grad()
def hungarian_match(class_logits: torch.Tensor, boxes: torch.Tensor, target_classes: torch.Tensor,
                    target_boxes: torch.Tensor, box_weight: float = 5.0) -> torch.Tensor:
    """For each image, the query matched to each target: ``(B, M)`` query indices (DETR's matching).

    The cost of pairing query ``q`` with target ``m`` is ``-p_q(class_m) + box_weight * L1(box_q, box_m)``;
    scipy's ``linear_sum_assignment`` (the Hungarian algorithm) finds the cheapest one-to-one pairing.
    """
    optimize = require_package("scipy.optimize", "scipy", "hungarian_match")
    prob = class_logits.softmax(-1)  # (B, Q, K + 1)
    out = torch.empty(target_classes.shape, dtype=torch.long)
    for i in range(prob.shape[0]):
        cost = -prob[i][:, target_classes[i]]  # (Q, M)
        cost = cost + box_weight * torch.cdist(boxes[i], target_boxes[i], p=1)  # (Q, M)
        rows, cols = optimize.linear_sum_assignment(cost.numpy())
        out[i, torch.as_tensor(cols)] = torch.as_tensor(rows)
    return out


# ----------------------------------------------------------------------------- captioning with spatial attention


def caption_vocab() -> list[str]:
    """Token ids: the colours, then the shapes, then ``<bos>``."""
    return [*COLORS, *SHAPES, "<bos>"]


def caption_tokens(scenes: Scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions "colour shape colour shape ..." from left to right: ``(tokens (N, 2M), object (N, 2M))``.

    ``object[i, t]`` is the index (into ``scenes.boxes``) of the shape that word ``t`` describes.
    """
    order = scenes.boxes[..., 0].argsort(-1)  # (N, M): objects from left to right
    color = scenes.colors.gather(1, order)  # (N, M)
    shape = scenes.classes.gather(1, order) + len(COLORS)  # (N, M)
    tokens = torch.stack([color, shape], -1).flatten(1)  # (N, 2M): c0 s0 c1 s1 ...
    return tokens, order.repeat_interleave(2, dim=1)


class SpatialCaptioner(nn.Module):
    """Show, attend and tell (Xu et al., 2015) in miniature: a GRU writes the caption word by word.

    Before each word, the previous state queries the feature grid with cross-attention (the
    library's ``MultiHeadAttention``, one head); the context and the previous word feed the GRU.
    ``attention=False`` feeds the grid's mean instead (the baseline). ``forward(images, tokens)``
    is teacher-forced on ``tokens (B, T)`` and returns ``(logits (B, T, V), weights (B, T, h*w))``;
    ``caption(images, T)`` decodes greedily.
    """

    def __init__(self, vocab_size: int = 7, dim: int = 32, image_size: int = 16, attention: bool = True) -> None:
        super().__init__()
        self.attention, self.bos = attention, vocab_size - 1
        self.backbone = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(dim, dim, 3, padding=1, stride=2), nn.ReLU())
        side = (image_size + 1) // 2
        self.pos = nn.Parameter(torch.randn(1, side * side, dim) * 0.1)
        self.embed = nn.Embedding(vocab_size, dim)
        self.init = nn.Linear(dim, dim)
        self.attn = MultiHeadAttention(dim, 1)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.out = nn.Linear(2 * dim, vocab_size - 1)  # never predicts <bos>

    def _memory(self, images):
        f = self.backbone(images)  # (B, D, h, w)
        return f.flatten(2).transpose(1, 2) + self.pos  # (B, h*w, D)

    def _step(self, memory, h, word):
        if self.attention:
            ctx, w = self.attn(h[:, None], memory, memory)  # (B, 1, D), (B, 1, 1, h*w)
            ctx, w = ctx[:, 0], w[:, 0, 0]  # (B, D), (B, h*w)
        else:
            ctx = memory.mean(1)  # (B, D): the same context at every word
            w = torch.full(memory.shape[:2], 1.0 / memory.shape[1])
        h = self.cell(torch.cat([self.embed(word), ctx], -1), h)  # (B, D)
        return self.out(torch.cat([h, ctx], -1)), h, w

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        memory = self._memory(images)
        h = torch.tanh(self.init(memory.mean(1)))  # (B, D)
        prev = torch.full_like(tokens[:, 0], self.bos)
        logits, weights = [], []
        for t in range(tokens.shape[1]):
            lg, h, w = self._step(memory, h, prev)
            logits.append(lg)
            weights.append(w)
            prev = tokens[:, t]
        return torch.stack(logits, 1), torch.stack(weights, 1)  # (B, T, V), (B, T, h*w)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, length: int):
        memory = self._memory(images)
        h = torch.tanh(self.init(memory.mean(1)))
        prev = torch.full((images.shape[0],), self.bos, dtype=torch.long)
        words, weights = [], []
        for _ in range(length):
            lg, h, w = self._step(memory, h, prev)
            prev = lg.argmax(-1)
            words.append(prev)
            weights.append(w)
        return torch.stack(words, 1), torch.stack(weights, 1)  # (B, T), (B, T, h*w)

"""Part III vision models: patch embedding, the tiny ViT (parity with timm), pooling, object queries."""

import importlib.abc
import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from attn_course.apps.vision import (
    CNNClassifier,
    MLPClassifier,
    ObjectQueryDetector,
    PatchEmbedding,
    PooledCNN,
    SpatialCaptioner,
    VisionTransformer,
    ViTConfig,
    ViTSegmenter,
    box_iou,
    caption_tokens,
    caption_vocab,
    hungarian_match,
    load_timm_weights,
    make_part_images,
    make_scenes,
)


class _AnyName(type):
    """A stand-in class whose every attribute is another stand-in class (named for it)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _AnyName(name, (cls,), {})
        setattr(cls, name, sub)
        return sub


class _StandIn(metaclass=_AnyName):
    def __init__(self, *args, **kwargs):
        pass


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _AnyName(name, (_StandIn,), {})
        setattr(self, name, value)
        return value


class _StandInTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import torchvision[.anything]`` with stand-in modules."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def timm_vit_class():
    """timm's ``VisionTransformer`` class, or a skip when timm is not installed.

    timm imports torchvision at import time, for its data transforms only. ``make test`` installs
    timm without torchvision: the only torchvision wheel for our pinned CPU torch is a CUDA
    build whose compiled ops cannot load beside it, and a broken torchvision also breaks
    ``transformers``. So when torchvision is missing, timm is imported against stand-in
    torchvision modules (the ViT never touches them), which are dropped again right after.
    """
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name == "timm":
            pytest.skip("timm is not installed (pip install --no-deps timm)")
        if not (err.name or "").startswith("torchvision"):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "timm"]:
            del sys.modules[name]
        finder = _StandInTorchvision()
        sys.meta_path.insert(0, finder)
        try:
            import timm  # noqa: F401
        finally:
            sys.meta_path.remove(finder)
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]  # nothing else in this process should see the stand-ins
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT


def test_patch_embedding_is_one_matrix_per_flattened_patch():
    torch.manual_seed(0)
    pe = PatchEmbedding(img_size=8, patch_size=2, in_chans=1, embed_dim=5)
    x = torch.randn(3, 1, 8, 8)
    out = pe(x)
    assert out.shape == (3, 16, 5)
    patches = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(3, 16, 4)  # (B, N, P*P), row-major patches
    manual = patches @ pe.proj.weight.reshape(5, 4).T + pe.proj.bias
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="images"):
        pe(torch.randn(3, 1, 6, 6))


def test_vit_config_checks_divisibility():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(img_size=8, patch_size=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ViTConfig(embed_dim=30, num_heads=4)


def test_vit_shapes_and_class_token_attention():
    model = VisionTransformer()
    logits, maps = model(torch.rand(4, 1, 8, 8))
    assert logits.shape == (4, 10)
    assert len(maps) == 2 and maps[0].shape == (4, 2, 17, 17)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(4, 2, 17))


def test_vit_matches_timm_with_the_same_weights():
    TimmViT = timm_vit_class()
    torch.manual_seed(0)
    theirs = TimmViT(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                     num_heads=2, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token").eval()
    with torch.no_grad():  # random, non-zero class token and biases so every weight matters
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = load_timm_weights(VisionTransformer(ViTConfig()), theirs).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x), atol=1e-5, rtol=1e-5)


def test_pooled_cnn_weights_form_a_map():
    for pooling in ("attention", "mean"):
        logits, w = PooledCNN(pooling=pooling)(torch.rand(2, 1, 12, 12))
        assert logits.shape == (2, 2) and w.shape == (2, 12, 12)
        torch.testing.assert_close(w.sum((1, 2)), torch.ones(2))


def test_part_images_differ_only_in_the_part():
    g = torch.Generator().manual_seed(0)
    images, labels, part = make_part_images(20, g, size=12)
    assert images.shape == (20, 1, 12, 12) and part.sum((1, 2)).eq(9).all()
    assert set(labels.tolist()) == {0, 1}


def test_scenes_boxes_cover_their_shapes():
    g = torch.Generator().manual_seed(0)
    s = make_scenes(10, g)
    assert s.images.shape == (10, 3, 16, 16) and s.boxes.shape == (10, 2, 4)
    assert (s.boxes >= 0).all() and (s.boxes <= 1).all()
    torch.testing.assert_close(box_iou(s.boxes, s.boxes), torch.ones(10, 2))


def test_hungarian_match_finds_the_cheapest_pairing():
    tgt_boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    tgt_cls = torch.tensor([[0, 1]])
    boxes = torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 4)
    assert hungarian_match(logits, boxes, tgt_cls, tgt_boxes).tolist() == [[2, 1]]


def test_detector_shapes_with_and_without_attention():
    for attention in (True, False):
        cls, boxes, w = ObjectQueryDetector(attention=attention)(torch.rand(2, 3, 16, 16))
        assert cls.shape == (2, 4, 4) and boxes.shape == (2, 4, 4) and w.shape == (2, 4, 64)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))


def test_captions_name_the_shapes_from_left_to_right():
    s = make_scenes(20, torch.Generator().manual_seed(1), random_colors=True)
    tokens, obj = caption_tokens(s)
    vocab = caption_vocab()
    assert tokens.shape == (20, 4) and obj.shape == (20, 4)
    for i in range(20):
        left = int(s.boxes[i, :, 0].argmin())
        assert obj[i, 0] == obj[i, 1] == left
        assert vocab[int(tokens[i, 0])] == s.color_names[int(s.colors[i, left])]
        assert vocab[int(tokens[i, 1])] == s.class_names[int(s.classes[i, left])]


def test_captioner_shapes_with_and_without_attention():
    images = torch.rand(3, 3, 16, 16)
    tokens = torch.randint(0, 6, (3, 4))
    for attention in (True, False):
        model = SpatialCaptioner(attention=attention)
        logits, w = model(images, tokens)
        assert logits.shape == (3, 4, 6) and w.shape == (3, 4, 64)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
        words, _ = model.caption(images, 4)
        assert words.shape == (3, 4) and (words < 6).all()


def test_the_digit_baselines_have_about_the_vit_size():
    sizes = {name: sum(p.numel() for p in m.parameters())
             for name, m in (("vit", VisionTransformer()), ("mlp", MLPClassifier(64, 128, 10)), ("cnn", CNNClassifier()))}
    assert all(abs(n - sizes["vit"]) / sizes["vit"] < 0.05 for n in sizes.values()), sizes
    assert CNNClassifier()(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_segmenter_puts_each_patch_logits_back_in_place():
    torch.manual_seed(0)
    model = ViTSegmenter(ViTConfig(num_classes=3))
    logits = torch.randn(2, 16, 3 * 2 * 2)  # (B, N, K*P*P)
    # F.fold is torch's own "patches back into the image": (B, K*P*P, N) -> (B, K, I, I)
    expected = F.fold(logits.transpose(1, 2), output_size=(8, 8), kernel_size=2, stride=2)
    torch.testing.assert_close(model.unpatchify(logits), expected)
    out, maps = model(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 3, 8, 8) and len(maps) == 2 and maps[0].shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(2, 1, 6, 6))


@pytest.mark.parametrize("attention", [True, False])
def test_segmenter_without_attention_never_mixes_patches(attention):
    torch.manual_seed(0)
    model = ViTSegmenter(attention=attention).eval()
    x = torch.rand(1, 1, 8, 8)
    y = x.clone()
    y[..., :2, :2] += 1.0  # change the top-left patch only
    with torch.no_grad():
        moved = (model(x)[0] - model(y)[0]).abs().amax(1)[0] > 1e-6  # (I, I): pixels whose logits changed
    outside = moved.clone()
    outside[:2, :2] = False
    assert moved[:2, :2].any()
    assert outside.any() == attention  # with attention, other patches read the change; without, none does

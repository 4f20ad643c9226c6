"""Chapter 12's labs: the shape-pair segmentation data and run, and the caption and detection measurements."""

import pytest
import torch

from attn_course.labs.vision_apps import _box_cells, _order_right
from attn_course.labs.vision_segmentation import make_shape_pairs, mask_iou, run_segmentation


def test_shape_pairs_are_apart_with_a_clear_larger_one():
    d = make_shape_pairs(200, torch.Generator().manual_seed(0))
    assert d.images.shape == (200, 1, 8, 8) and d.shapes.shape == (200, 2, 8, 8)
    assert not (d.shapes[:, 0] & d.shapes[:, 1]).any()
    grown = torch.nn.functional.max_pool2d(d.shapes[:, :1].float(), 3, 1, 1)[:, 0].bool()  # shape 0 plus a pixel around
    assert not (grown & d.shapes[:, 1]).any(), "the shapes do not touch"
    small, big = d.areas.min(1).values.float(), d.areas.max(1).values.float()
    assert (big >= 1.3 * small).all() and (big <= 2.5 * small).all()
    assert (d.larger.sum((1, 2)) == d.areas.max(1).values).all()
    assert torch.equal(d.images[:, 0].bool(), d.shapes.any(1))
    assert make_shape_pairs(5, torch.Generator().manual_seed(1)).images.shape[0] == 5


def test_shape_pairs_refuse_what_cannot_fit():
    with pytest.raises(ValueError, match="max_side"):
        make_shape_pairs(5, torch.Generator().manual_seed(0), max_side=5)
    with pytest.raises(ValueError, match="area ratio"):
        make_shape_pairs(5, torch.Generator().manual_seed(0), min_side=3, max_side=3)  # equal squares only


def test_mask_iou():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2], b[0, :1] = True, True  # 8 vs 4 pixels, 4 shared
    assert mask_iou(a, b).tolist() == [0.5, 0.0]


def test_run_segmentation_smoke():
    r = run_segmentation(steps=3, train_size=64, test_size=16, progress=False)
    assert set(r.iou) == {"attention", "per-patch"} and r.params["attention"] == r.params["per-patch"]
    assert r.predictions["attention"].shape == (16, 8, 8) and 0 <= r.both_shapes_iou <= 1


def test_order_right_counts_swapped_captions():
    target = torch.tensor([[0, 3, 1, 4], [0, 3, 1, 4], [0, 3, 1, 4], [2, 5, 2, 5]])
    words = torch.tensor([[0, 3, 1, 4], [1, 4, 0, 3], [0, 3, 0, 3], [2, 5, 2, 5]])
    # right order, swapped, a wrong pair (left out), identical pairs (left out)
    assert _order_right(words, target) == 0.5


def test_box_cells_marks_the_cells_whose_centre_is_inside():
    cells = _box_cells(torch.tensor([0.25, 0.25, 0.5, 0.5]), 4)  # the top-left quarter
    assert cells.sum() == 4 and cells[:2, :2].all()


def test_plot_segmentation_draws_four_rows():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attn_course.labs.vision_segmentation import plot_segmentation

    r = run_segmentation(steps=1, train_size=16, test_size=6, progress=False)
    fig = plot_segmentation(r, count=3)
    try:
        assert len(fig.axes) == 12
    finally:
        plt.close(fig)

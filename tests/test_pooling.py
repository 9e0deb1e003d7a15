"""The gather form of multi-scale RoIAlign (CPU inference) equals torchvision's ``MultiScaleRoIAlign``."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from img2pose_core.pooling import fpn_level_of_boxes, multiscale_roi_align_gather, roi_align_gather


def _boxes(n: int, width: int, height: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=generator) ** 2 * torch.tensor([width, height]) * 0.8 + 0.01
    return torch.cat([xy, xy + wh], dim=1)


# Boxes on and past every border, degenerate and sub-cell boxes: RoIAlign's special cases.
EDGE_BOXES = torch.tensor(
    [
        [-40.0, -40.0, 30.0, 30.0],
        [-200.0, -200.0, -150.0, -150.0],
        [0.0, 0.0, 0.0, 0.0],
        [10.0, 10.0, 10.5, 10.2],
        [500.0, 300.0, 700.0, 500.0],
        [250.0, 150.0, 257.0, 161.0],
        [0.0, 0.0, 512.0, 320.0],
        [511.0, 319.0, 512.0, 320.0],
        [-3.9, -3.9, 4.1, 4.1],
    ]
)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [0.25, 0.125, 0.03125])
def test_single_level_matches_torchvision(channels_last, scale):
    g = torch.Generator().manual_seed(int(scale * 1000))
    h, w = int(320 * scale), int(512 * scale)
    feature = torch.randn(2, 16, h, w, generator=g)
    if channels_last:
        feature = feature.contiguous(memory_format=torch.channels_last)
    boxes = torch.cat([_boxes(200, 512, 320, g), EDGE_BOXES])
    batch = torch.randint(0, 2, (len(boxes), 1), generator=g).float()
    rois = torch.cat([batch, boxes], dim=1)
    with torch.inference_mode():
        expected = roi_align(feature, rois, 7, spatial_scale=scale, sampling_ratio=2, aligned=False)
        got = roi_align_gather(feature, rois, scale, 7, 2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    # The edge boxes really exercise the special cases: some bins are all zero, some are not.
    edge = got[-len(EDGE_BOXES):]
    assert (edge[1] == 0).all() and edge[0].abs().sum() > 0


def test_multiscale_matches_torchvision_on_a_batch_of_two_sizes():
    g = torch.Generator().manual_seed(7)
    names = ["0", "1", "2", "3"]
    image_shapes = [(640, 1024), (576, 960)]
    features = {
        name: torch.randn(2, 32, 640 // 2 ** (i + 2), 1024 // 2 ** (i + 2), generator=g).contiguous(
            memory_format=torch.channels_last
        )
        for i, name in enumerate(names)
    }
    proposals = [torch.cat([_boxes(300, 1024, 640, g), EDGE_BOXES]), _boxes(150, 960, 576, g)]
    reference = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    with torch.inference_mode():
        expected = reference(features, proposals, image_shapes)
        got = multiscale_roi_align_gather([features[n] for n in names], proposals, image_shapes, 7, 2)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    # Every level pooled something, so the level assignment itself was compared.
    levels = fpn_level_of_boxes(torch.cat(proposals), 2, 5)
    assert set(levels.tolist()) == {0, 1, 2, 3}


def test_empty_proposals_give_an_empty_result():
    features = [torch.randn(1, 8, 16 // 2**i, 16 // 2**i) for i in range(4)]
    out = multiscale_roi_align_gather(features, [torch.zeros((0, 4))], [(64, 64)], 7, 2)
    assert out.shape == (0, 8, 7, 7)


def test_heads_use_the_gather_form_only_for_cpu_inference(golden_bundle):
    from img2pose_core.bundle import open_bundle

    heads = open_bundle(golden_bundle).build_model().roi_heads
    g = torch.Generator().manual_seed(3)
    features = {str(i): torch.randn(1, 256, 80 // 2**i, 128 // 2**i, generator=g) for i in range(4)}
    proposals = [_boxes(64, 512, 320, g)]
    with torch.inference_mode():
        fast = heads.pool(features, proposals, [(320, 512)])
        heads.gather_pooling = False
        slow = heads.pool(features, proposals, [(320, 512)])
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=1e-5)
    # With gradients (training), torchvision's op is used so its backward applies.
    heads.gather_pooling = True
    pooled = heads.pool({k: v.requires_grad_() for k, v in features.items()}, proposals, [(320, 512)])
    nodes = _graph_node_names(pooled.grad_fn)
    assert any("roi_align" in n for n in nodes) and not any("EmbeddingBag" in n for n in nodes), nodes


def _graph_node_names(fn) -> set[str]:
    names, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_reduced_precision_features_are_pooled_at_float32_coordinates():
    # Box corners near 1000 px have a resolution of 0.5 px in fp16: the sampling must not use it.
    g = torch.Generator().manual_seed(11)
    feature = torch.randn(1, 8, 160, 288, generator=g)
    rois = torch.tensor([[0.0, 1000.3, 500.7, 1010.9, 511.1]])
    with torch.inference_mode():
        expected = roi_align(feature, rois, 7, spatial_scale=0.25, sampling_ratio=2, aligned=False)
        got = roi_align_gather(feature.to(torch.bfloat16), rois, 0.25, 7, 2)
    assert got.dtype == torch.bfloat16
    expected_from_rounded = roi_align(feature.to(torch.bfloat16).float(), rois, 7, 0.25, 2, False)
    torch.testing.assert_close(got.float(), expected_from_rounded, atol=2e-2, rtol=1e-2)
    assert (expected - expected_from_rounded).abs().max() < 0.05


def test_heads_give_the_same_detections_sliced_or_whole(golden_bundle, golden_dir):
    # CPU pools and scores the proposals a slice at a time; one slice of everything must agree.
    import numpy as np
    from PIL import Image

    from img2pose_core.bundle import open_bundle

    model = open_bundle(golden_bundle).build_model(min_size=256, max_size=512)
    image = torch.from_numpy(np.asarray(Image.open(golden_dir / "images" / "astronaut.jpg").convert("RGB")).copy())
    tensor = image.permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        sliced = model([tensor, tensor.flip(-1)], threshold=0.3)
        model.roi_heads.CPU_SLICE = 10**6
        whole = model([tensor, tensor.flip(-1)], threshold=0.3)
    for a, b in zip(sliced, whole):
        assert len(a.scores) == len(b.scores) > 0
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.dofs, b.dofs, atol=1e-5, rtol=0)


def test_small_image_padded_far_beyond_its_width_matches_torchvision():
    # 42 px wide, padded to 64: the width ratio (16/42) is no power of two; the height decides.
    g = torch.Generator().manual_seed(13)
    names = ["0", "1", "2", "3"]
    features = {name: torch.randn(1, 8, 8 // 2**i, 16 // 2**i, generator=g) for i, name in enumerate(names)}
    proposals = [torch.tensor([[1.0, 2.0, 30.0, 25.0], [0.0, 0.0, 41.0, 31.0], [5.0, 5.0, 9.0, 12.0]])]
    reference = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    with torch.inference_mode():
        expected = reference(features, proposals, [(32, 42)])
        got = multiscale_roi_align_gather([features[n] for n in names], proposals, [(32, 42)], 7, 2)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)

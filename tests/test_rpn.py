"""The RPN's top-n NMS keeps exactly the proposals of torchvision's full per-level NMS."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from img2pose_core.rpn import batched_nms_top_n


def _levels_like_the_rpn(sizes: list[int], generator: torch.Generator, tie_step: float | None = None):
    """Per-level runs of boxes in descending score order, as the RPN's per-level top-k leaves them."""
    boxes, scores, levels = [], [], []
    for level, n in enumerate(sizes):
        xy = torch.rand(n, 2, generator=generator) * 600
        wh = torch.rand(n, 2, generator=generator) * 80 + 4 * 2**level
        s = torch.rand(n, generator=generator)
        if tie_step:  # coarse scores: many exact ties, as sigmoid near 1 gives in float32
            s = torch.round(s / tie_step) * tie_step
        s = s.sort(descending=True).values
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        scores.append(s)
        levels.append(torch.full((n,), level, dtype=torch.int64))
    return torch.cat(boxes), torch.cat(scores), torch.cat(levels)


@pytest.mark.parametrize("tie_step", [None, 1e-3, 0.05])
@pytest.mark.parametrize("top_n", [50, 300, 1000])
def test_kept_set_equals_the_full_nms(tie_step, top_n):
    g = torch.Generator().manual_seed(top_n + int((tie_step or 0) * 1000))
    boxes, scores, levels = _levels_like_the_rpn([3000, 2500, 900, 200, 60], g, tie_step)
    expected = batched_nms(boxes, scores, levels, 0.4)[:top_n]
    got = batched_nms_top_n(boxes, scores, levels, 0.4, top_n, first=top_n // 2)
    assert len(got) == len(expected)
    assert set(got.tolist()) == set(expected.tolist())
    # Sorted by score like torchvision's; only boxes of exactly equal score may swap places.
    assert torch.equal(scores[got], scores[expected])


def test_fewer_survivors_than_top_n_gives_them_all():
    g = torch.Generator().manual_seed(5)
    boxes, scores, levels = _levels_like_the_rpn([1500, 800], g)
    expected = batched_nms(boxes, scores, levels, 0.9)
    got = batched_nms_top_n(boxes, scores, levels, 0.9, 10**6, first=10)
    assert set(got.tolist()) == set(expected.tolist())


@pytest.mark.parametrize("shuffle", ["levels interleaved", "scores unsorted"])
def test_inputs_not_in_rpn_order_use_the_full_nms(shuffle):
    g = torch.Generator().manual_seed(9)
    boxes, scores, levels = _levels_like_the_rpn([1500, 800], g)
    if shuffle == "levels interleaved":
        order = torch.randperm(len(scores), generator=g)
    else:  # each level still one run, but in ascending score order
        order = torch.cat([(levels == level).nonzero().squeeze(1).flip(0) for level in levels.unique()])
    boxes, scores, levels = boxes[order], scores[order], levels[order]
    expected = batched_nms(boxes, scores, levels, 0.4)[:200]
    got = batched_nms_top_n(boxes, scores, levels, 0.4, 200, first=20)
    assert torch.equal(got, expected)


def test_model_proposals_equal_torchvisions_rpn(golden_bundle, golden_dir):
    import numpy as np
    from PIL import Image
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from img2pose_core.bundle import open_bundle

    model = open_bundle(golden_bundle).build_model(min_size=400, max_size=1400).eval()
    image = np.asarray(Image.open(golden_dir / "images" / "teaser.jpg").convert("RGB")).copy()
    with torch.inference_mode():
        batch, _ = model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
        features = model.backbone(batch.tensors)
        ours, _ = model.rpn(batch, features)
        model.rpn.filter_proposals = RegionProposalNetwork.filter_proposals.__get__(model.rpn)
        theirs, _ = model.rpn(batch, features)
    assert len(ours[0]) == len(theirs[0]) == 1000
    as_rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert as_rows(ours[0]) == as_rows(theirs[0])


def _host_syncs(fn) -> dict[str, int]:
    """How often ``fn`` made the host wait for a tensor's value: ``aten::_local_scalar_dense`` is behind
    ``.item()``, ``bool(t)``, ``int(t)`` and ``.tolist()``; ``aten::nonzero`` sizes its output on the host."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return {k: counts.get(k, 0) for k in ("aten::_local_scalar_dense", "aten::nonzero")}


def test_gpu_proposals_make_no_host_decision_inside_the_levels(golden_bundle, golden_dir):
    """What runs on CUDA (``prefix_nms`` off) decides nothing on the host per level: counted here on
    CPU with the profiler, against the CPU loop, which does, and against torchvision's own RPN, whose
    data-dependent shapes (small boxes, score floor) it keeps and no more; all keep the same proposals."""
    import numpy as np
    from PIL import Image
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from img2pose_core.bundle import open_bundle

    model = open_bundle(golden_bundle).build_model(min_size=400, max_size=1400).eval()
    image = np.asarray(Image.open(golden_dir / "images" / "teaser.jpg").convert("RGB")).copy()
    results, syncs = {}, {}
    with torch.inference_mode():
        batch, _ = model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255] * 2)
        features = model.backbone(batch.tensors)
        for prefix in (True, False):
            model.rpn.prefix_nms = prefix

            def run(prefix=prefix):
                results[prefix] = model.rpn(batch, features)[0]

            syncs[prefix] = _host_syncs(run)
        model.rpn.filter_proposals = RegionProposalNetwork.filter_proposals.__get__(model.rpn)
        syncs["torchvision"] = _host_syncs(lambda: model.rpn(batch, features))
    assert syncs[False]["aten::_local_scalar_dense"] == 0, syncs
    assert syncs[False]["aten::nonzero"] == syncs["torchvision"]["aten::nonzero"], syncs
    assert syncs[True]["aten::_local_scalar_dense"] > 0  # the CPU loop decides on the host: the count can fail
    for ours, theirs in zip(results[True], results[False]):
        assert {tuple(r) for r in ours.tolist()} == {tuple(r) for r in theirs.tolist()}

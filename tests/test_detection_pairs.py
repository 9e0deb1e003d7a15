"""The comparison of two runs' detections (tests/detection_pairs.py): tied scores may swap, nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from detection_pairs import assert_same_detections, pair_detections

TOL = {"scores": 1e-4, "boxes": 1.0, "poses": 1e-3}


def _faces(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0, 1, n))[::-1].copy()
    scores[11] = scores[10] - 2.5e-6  # a near tie, as at threshold 0 on the astronaut
    boxes = rng.uniform(0, 500, (n, 4))
    poses = rng.normal(0, 1, (n, 6)) * [0.3, 0.3, 0.3, 0.1, 0.1, 5]
    return {"scores": scores, "boxes": boxes, "poses": poses}


def _take(faces, order):
    return {k: v[order] for k, v in faces.items()}


def test_tied_detections_that_swap_are_paired_and_pass():
    want = _faces()
    order = np.arange(40)
    order[[10, 11]] = [11, 10]
    got = _take(want, order)
    got["scores"] = got["scores"] + 3e-5  # the small numerical differences that swap them
    with pytest.raises(AssertionError):  # by index, face 10 is the other face
        np.testing.assert_allclose(got["poses"], want["poses"], atol=TOL["poses"])
    assert list(pair_detections(got, want, TOL)[10:12]) == [11, 10]
    assert_same_detections(got, want, TOL)


def test_faces_that_really_differ_fail_though_paired():
    want = _faces()
    got = _take(want, np.arange(40))
    got["poses"] = got["poses"].copy()
    got["poses"][11, 2] += 0.01  # one tied face's pose differs by 10x the tolerance
    with pytest.raises(AssertionError, match="poses"):
        assert_same_detections(got, want, TOL)
    other = _faces(seed=1)  # another picture's faces
    with pytest.raises(AssertionError):
        assert_same_detections(other, want, TOL)
    with pytest.raises(AssertionError, match="39 detections, expected 40"):
        assert_same_detections(_take(want, np.arange(39)), want, TOL)


def test_detections_out_of_order_beyond_ties_fail():
    want = _faces()
    order = np.arange(40)
    order[[3, 30]] = [30, 3]  # same faces, but not tied: a change of order
    got = _take(want, order)
    assert list(pair_detections(got, want, TOL)[[3, 30]]) == [3, 30]
    with pytest.raises(AssertionError, match="scores"):
        assert_same_detections(got, want, TOL)

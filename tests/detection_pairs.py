"""Comparing the detections of two runs as the golden README does: the same number of detections, in the
same order except that detections whose scores are tied may swap, and each detection within tolerance of
the one it is paired with.

Comparing by index fails where two detections have nearly the same score (at threshold 0 there are pairs
2.5e-6 apart) and a tiny numerical difference (another memory layout, batch or CPU) swaps them. Here the
detections are paired by assignment (``scipy.optimize.linear_sum_assignment``), a detection may only be
paired with one at a position of tied score, and the tolerances are then applied to the pairs: faces that
really differ still fail.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["pair_detections", "assert_same_detections"]

FIELDS = ("scores", "boxes", "poses")


def _fields(faces) -> dict[str, np.ndarray]:
    if isinstance(faces, Mapping):
        return {k: np.asarray(v, dtype=np.float64) for k, v in faces.items()}
    return {k: np.asarray(getattr(faces, k), dtype=np.float64) for k in FIELDS}


def _tie_runs(scores: np.ndarray, tie: float) -> np.ndarray:
    """The run number of each position: consecutive scores no further apart than ``tie`` share a run."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.abs(np.diff(scores)) > tie)])


def pair_detections(got, want, atol: Mapping[str, float], tie: float | None = None) -> np.ndarray:
    """``order`` such that ``got[order[i]]`` is the detection paired with ``want[i]``.

    ``got`` and ``want`` are :class:`ImageFaces` or mappings of ``scores`` / ``boxes`` / ``poses``
    arrays (one row per detection); ``atol`` names the fields used and their tolerances. A pair's cost
    is its largest difference in units of tolerance; pairs outside tolerance cost more than any pairing
    within it, so a pairing that puts every detection within tolerance is found whenever one exists.
    Detections are only paired within a run of tied scores (consecutive ``want`` positions whose
    scores are no further apart than ``tie``, by default twice the score tolerance): a detection that
    moved further is a change of order, and the comparison of its position fails.
    """
    g, w = _fields(got), _fields(want)
    n = len(w["scores"])
    assert len(g["scores"]) == n, f"{len(g['scores'])} detections, expected {n}"
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tie = 2 * atol["scores"] if tie is None else tie
    order = np.arange(n)
    runs = _tie_runs(w["scores"], tie)
    for run in np.unique(runs):
        (idx,) = np.nonzero(runs == run)  # consecutive positions; pairs never cross a change of order
        if len(idx) == 1:
            continue
        cost = np.zeros((len(idx), len(idx)))
        for key, tol in atol.items():
            a, b = w[key][idx].reshape(len(idx), 1, -1), g[key][idx].reshape(1, len(idx), -1)
            cost = np.maximum(cost, np.abs(a - b).max(axis=2) / tol)
        cost = np.where(cost > 1, cost + len(idx) + 1, cost)
        rows, cols = linear_sum_assignment(cost)
        order[idx[rows]] = idx[cols]
    return order


def assert_same_detections(got, want, atol: Mapping[str, float], tie: float | None = None, err_msg: str = "") -> None:
    """The same number of detections, each within ``atol`` of the one it is paired with (see
    :func:`pair_detections`); a failure names the field, the detections and the largest difference."""
    g, w = _fields(got), _fields(want)
    assert len(g["scores"]) == len(w["scores"]), f"{err_msg}: {len(g['scores'])} detections, expected {len(w['scores'])}"
    order = pair_detections(g, w, atol, tie)
    for key, tol in atol.items():
        np.testing.assert_allclose(g[key][order], w[key], rtol=0, atol=tol, err_msg=f"{err_msg} {key} (paired by assignment)")

"""Network sizes and batches: the size the network resizes each image to, and which images run together.

Only images that pad to the same network input share a batch: each then sees exactly the zero border it
would see alone, so batching never changes a detection.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

__all__ = ["resized_size", "padded_size", "reported_sizes", "plan_batches"]


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height) the network's transform resizes a ``width x height`` image to."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    # interpolate(recompute_scale_factor=True) floors size * scale.
    return int(math.floor(width * scale)), int(math.floor(height * scale))


def padded_size(width: int, height: int, divisor: int = 32) -> tuple[int, int]:
    """(width, height) of the zero-padded network input of a resized ``width x height`` image."""
    return -(-width // divisor) * divisor, -(-height // divisor) * divisor


def reported_sizes(
    tensors: Sequence[Tensor | None], original_sizes: Sequence[tuple[int, int] | None] | None
) -> list[tuple[int, int] | None]:
    """Per image, the (width, height) its coordinates are reported in: the picture's size where
    ``original_sizes`` gives one (the tensor is a reduced copy), else the tensor's; None without a tensor."""

    def size_of(i: int, t: Tensor) -> tuple[int, int]:
        given = original_sizes[i] if original_sizes else None
        return (int(t.shape[2]), int(t.shape[1])) if given is None else (int(given[0]), int(given[1]))

    return [None if t is None else size_of(i, t) for i, t in enumerate(tensors)]


def plan_batches(
    tensors: Sequence[Tensor | None], min_size: int, max_size: int, batch_size: int
) -> tuple[list[list[int]], dict[int, tuple[tuple[int, int], str]]]:
    """The batches (input indices, at most ``batch_size`` each, all of one padded network size) of the
    images that run, and for each image too elongated to run, its network size and why it does not."""
    # Images of similar aspect ratio pad to the same size: grouping by it wastes little on padding.
    buckets: dict[tuple[int, int], list[int]] = {}
    too_small: dict[int, tuple[tuple[int, int], str]] = {}
    for i, t in enumerate(tensors):
        if t is None:
            continue
        h, w = int(t.shape[1]), int(t.shape[2])
        net = resized_size(w, h, min_size, max_size)
        if min(net) < 1:
            too_small[i] = net, f"{w}x{h} image resizes to {net[0]}x{net[1]} px at min_size {min_size} / max_size {max_size}"
        else:
            buckets.setdefault(padded_size(*net), []).append(i)
    batches = [members[s : s + batch_size] for members in buckets.values() for s in range(0, len(members), batch_size)]
    return batches, too_small

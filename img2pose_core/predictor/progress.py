"""The progress bar of :meth:`~img2pose_core.predictor.Predictor.predict` (``progress=True``): images
done of the call's total, images/s and the time left, drawn by tqdm on stderr. Off by default: a library
call prints nothing unless asked."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Progress", "progress_bar"]


class Progress(Protocol):
    """What a predict call tells its bar: ``n`` more images are done."""

    def update(self, n: int = 1) -> object: ...


class _Silent:
    """The bar of a call without one: counts nothing, shows nothing."""

    def update(self, n: int = 1) -> object:
        """Nothing to show."""
        return None


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Progress]:
    """A bar of ``total`` images on stderr while the block runs, closed (its last state left on screen)
    after it; a silent one where not ``enabled``."""
    if not enabled:
        yield _Silent()
        return
    from tqdm import tqdm

    # sys.stderr as it is now (a notebook's or a test's capture replaces it), not as tqdm imported it.
    # Always images/s (tqdm's default turns to s/image below one image a second, as on a CPU).
    shape = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    with tqdm(total=total, unit=" images", desc="img2pose", bar_format=shape, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar

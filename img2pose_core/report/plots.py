"""The report's figures: Matplotlib on its Agg canvas (no display, no global pyplot state), as PNG bytes.

Each plot takes the aggregated rows of :mod:`.queries` (bins and counts), never the faces themselves.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["plot_angles", "plot_faces_per_image", "plot_scores", "plot_sizes", "plot_status", "plot_yaw_pitch"]


def _figure(width: float = 7.0, height: float = 3.2, ncols: int = 1) -> tuple[Any, list]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No Software entry, so that the same figures give the same bytes on every Matplotlib version.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _stairs(ax: Any, edges: np.ndarray, counts: np.ndarray, colour: str) -> None:
    ax.stairs(counts, edges, fill=True, color=colour, alpha=0.85)


def _dense(rows: list[tuple]) -> tuple[int, np.ndarray]:
    """(first bin, counts of every bin from it to the last) of sparse (bin, count) rows."""
    lo, hi = int(min(r[0] for r in rows)), int(max(r[0] for r in rows))
    counts = np.zeros(hi - lo + 1)
    for b, c in rows:
        counts[int(b) - lo] = c
    return lo, counts


def plot_status(rows: list[tuple]) -> bytes:
    """Horizontal bars of (status, images), ok in green and the failures in red."""
    fig, (ax,) = _figure(7.0, max(1.6, 0.45 * len(rows) + 0.9))
    if rows:
        names = [r[0] for r in rows][::-1]
        counts = [r[1] for r in rows][::-1]
        colours = ["#3a7d44" if n == "ok" else "#c0392b" for n in names]
        bars = ax.barh(names, counts, color=colours)
        ax.bar_label(bars, padding=3)
        ax.set_xlabel("images")
        ax.margins(x=0.12)
    else:
        _empty(ax, "no images")
    return _png(fig)


def plot_faces_per_image(rows: list[tuple], cap: int) -> bytes:
    """Bars of (faces, images); the bar of ``cap`` is labelled ``cap+``."""
    fig, (ax,) = _figure()
    if rows:
        ks = [r[0] for r in rows]
        ax.bar(ks, [r[1] for r in rows], color="#2e6fa7", width=0.8)
        ticks = sorted(set(ks))
        ax.set_xticks(ticks, [f"{k}+" if k == cap else str(k) for k in ticks])
        ax.set_xlabel("faces in the image")
        ax.set_ylabel("images")
    else:
        _empty(ax, "no image was run through the model")
    return _png(fig)


def plot_angles(hists: dict[str, list[tuple]], step: float) -> bytes:
    """Three histograms side by side: yaw, pitch, roll, with bins of ``step`` degrees."""
    fig, axes = _figure(10.0, 3.0, ncols=3)
    for ax, (name, colour) in zip(axes, (("yaw", "#c0392b"), ("pitch", "#3a7d44"), ("roll", "#2e6fa7"))):
        rows = hists[name]
        if not rows:
            _empty(ax, f"no faces: no {name}")
            continue
        lo, counts = _dense(rows)
        _stairs(ax, (np.arange(lo, lo + len(counts) + 1)) * step, counts, colour)
        ax.set_xlabel(f"{name} (degrees)")
        ax.set_ylabel("faces")
    return _png(fig)


def plot_yaw_pitch(rows: list[tuple], step: float, limit: float) -> bytes:
    """A heat map of (yaw bin, pitch bin, faces) over ±``limit`` degrees, log colour scale."""
    from matplotlib.colors import LogNorm

    fig, (ax,) = _figure(6.0, 4.6)
    if not rows:
        _empty(ax, "no faces")
        return _png(fig)
    n = int(round(2 * limit / step))
    grid = np.zeros((n, n))
    for yb, pb, c in rows:
        grid[int(pb), int(yb)] += c
    masked = np.ma.masked_equal(grid, 0)
    image = ax.imshow(masked, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis",
                      norm=LogNorm(vmin=1, vmax=max(1.0, grid.max())), aspect="equal", interpolation="nearest")  # fmt: skip
    fig.colorbar(image, ax=ax, label="faces")
    ax.set_xlabel("yaw (degrees)")
    ax.set_ylabel("pitch (degrees)")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0, color="0.7", lw=0.6)
    return _png(fig)


def plot_scores(rows: list[tuple], bins: int) -> bytes:
    """A histogram of (bin, faces) with ``bins`` bins over [0, 1], drawn from the first bin that has faces."""
    fig, (ax,) = _figure()
    if rows:
        counts = np.zeros(bins)
        for b, c in rows:
            counts[int(b)] = c
        first = int(min(r[0] for r in rows))
        _stairs(ax, np.arange(first, bins + 1) / bins, counts[first:], "#8e44ad")
        ax.set_xlabel("score")
        ax.set_ylabel("faces")
    else:
        _empty(ax, "no faces")
    return _png(fig)


def plot_sizes(hists: dict[str, list[tuple]], per_octave: int) -> bytes:
    """Two histograms, box width and height, on a log2 axis with ``per_octave`` bins per doubling."""
    fig, axes = _figure(10.0, 3.0, ncols=2)
    for ax, (name, colour) in zip(axes, (("width", "#d35400"), ("height", "#16a085"))):
        rows = hists[name]
        if not rows:
            _empty(ax, "no faces")
            continue
        lo, counts = _dense(rows)
        _stairs(ax, 2.0 ** (np.arange(lo, lo + len(counts) + 1) / per_octave), counts, colour)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"box {name} (pixels of the original image)")
        ax.set_ylabel("faces")
    return _png(fig)

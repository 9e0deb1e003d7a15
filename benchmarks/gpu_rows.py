"""The rows of ``benchmarks/gpu_check.py``'s predictor table, measured or not."""

from __future__ import annotations

__all__ = ["FIGURES", "not_measured", "cell"]

# The figures of a predictor row: a row the check could not measure has each of them null, and says why
# in ``skipped`` (the Markdown prints "not measured: <why>" in their place).
FIGURES = ("images", "images_per_s", "ms_per_image", "warmup_s", "vs_eager", "peak_gpu_mib")


def not_measured(reason: str, **keys) -> dict:
    """A row whose figures were not measured, and why."""
    return {**keys, **dict.fromkeys(FIGURES), "skipped": reason}


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None and row.get("skipped") and key in FIGURES:
        return f"not measured: {row['skipped']}" if key == "images_per_s" else "-"
    return "" if value is None and key not in row else str(value)

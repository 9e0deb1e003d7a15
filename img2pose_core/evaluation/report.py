"""The evaluation report: the benchmarks' results as JSON, and as Markdown tables for people."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["markdown_table", "write_report"]


def markdown_table(report: dict) -> str:
    """One table per benchmark of a report ``{"aflw2000": {...}, "biwi": {...}, "wider": {...}}``."""
    lines = []
    for name, res in report.items():
        if not isinstance(res, dict):
            continue
        if name == "wider":
            keys = [k for k in ("easy", "medium", "hard") if k in res]
            lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines.append("| " + " | ".join(f"{res[k]:.4f}" for k in keys) + " |")
        else:
            keys = [k for k in ("yaw", "pitch", "roll", "mae", "translation_mae", "evaluated", "skipped", "missed") if k in res]
            fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
            lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines.append("| " + " | ".join(fmt(res[k]) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """``path`` (JSON) and the Markdown table beside it (same name, ``.md``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
    md = path.with_suffix(".md")
    md.write_text(markdown_table({k: v for k, v in report.items() if k != "settings"}))
    return path, md

"""docs/schema.md describes exactly the columns and statuses that img2pose_core/output.py defines."""

from __future__ import annotations

import re

from conftest import ROOT
from img2pose_core.output import FACES_SCHEMA, IMAGES_SCHEMA, NOT_WRITTEN, RUNS_SCHEMA, STATUSES


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    rest = text[start + len(heading) :]
    nxt = re.search(r"^## ", rest, flags=re.M)
    return rest[: nxt.start()] if nxt else rest


def _documented_columns(section: str) -> set[str]:
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z0-9_]+)`", first_cell))
    return names


def test_every_column_is_described_and_nothing_else():
    text = (ROOT / "docs" / "schema.md").read_text()
    assert _documented_columns(_section(text, "## `faces`")) == set(FACES_SCHEMA.names)
    images = _section(text, "## `images`")
    table, _, statuses = images.partition("### `status` values")
    assert _documented_columns(table) == set(IMAGES_SCHEMA.names)
    assert _documented_columns(statuses) == set(STATUSES)


def test_runs_table_and_not_written_reasons_are_described():
    text = (ROOT / "docs" / "schema.md").read_text()
    assert _documented_columns(_section(text, "## `runs` (Iceberg)")) == set(RUNS_SCHEMA.names)
    manifest = _section(text, "## `runs/<run_id>.json`")
    assert _documented_columns(manifest.split("| reason | what |", 1)[1]) == set(NOT_WRITTEN) - {"skipped"}

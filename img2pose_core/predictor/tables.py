"""Several results as one table: :func:`faces_table` (pyarrow, one row per face) and
:func:`faces_dataframe` (pandas, one row per face plus one per image without any, so no input is lost).

Both add to the job's ``faces`` columns (:data:`img2pose_core.output.FACES_SCHEMA`, in its order) the
Python API's own: ``input_index`` and ``input_name``, which say which input of the call a row is about.
They are not columns of the job's Parquet tables; drop them (``table.drop_columns(INPUT_COLUMNS)``) for
rows of exactly the job's schema. pyarrow and pandas are imported only when a conversion runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..uris import redact_uri
from .faces import ImageFaces

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["INPUT_COLUMNS", "faces_table", "faces_dataframe"]

# The Python API's columns beside the job's: the input's position in the call, and its name.
INPUT_COLUMNS = ["input_index", "input_name"]


def _results_and_uris(
    results: ImageFaces | Iterable[ImageFaces], image_uris: Iterable[str | None] | None
) -> tuple[list[ImageFaces], list[str | None]]:
    """``results`` as a list (a lone result is one), and one ``image_uris`` entry per result (None: its own)."""
    listed = [results] if isinstance(results, ImageFaces) else list(results)
    if not all(isinstance(r, ImageFaces) for r in listed):
        raise TypeError("expected ImageFaces results (those of Predictor.predict)")
    uris: list[str | None] = [None] * len(listed) if image_uris is None else list(image_uris)
    if len(uris) != len(listed):
        raise ValueError(f"got {len(uris)} image_uris for {len(listed)} results")
    return listed, uris


def _input_ids(results: list[ImageFaces], uris: list[str | None]) -> tuple[list[int], list[str]]:
    """Per result: its input index (its position in ``results`` where it has none) and its name: the
    given URI, else its own name, else its image URI, else ``<input i>``."""
    index = [i if r.input_index is None else r.input_index for i, r in enumerate(results)]
    names = []
    for i, r, uri in zip(index, results, uris):
        names.append(redact_uri(uri) if uri is not None else r.input_name or r.image_uri or f"<input {i}>")
    return index, names


def faces_table(
    results: ImageFaces | Iterable[ImageFaces],
    image_uris: Iterable[str | None] | None = None,
    *,
    run_id: str | None = None,
) -> "pyarrow.Table":
    """The faces of several results (or one) as one table, in input order: one row per face, the columns
    of the job's ``faces`` schema in its order (see :meth:`ImageFaces.to_arrow`), then ``input_index``
    (int64) and ``input_name`` (string; see :class:`ImageFaces`). ``image_uris``, one per result, set
    ``image_uri`` and ``input_name`` for the images whose result does not carry them (pixels given);
    None keeps the result's own. Images without faces, and those that did not run (``status`` not
    ``ok``), have no rows: :func:`faces_dataframe` keeps them."""
    import pyarrow as pa

    from ..output import FACES_SCHEMA

    listed, uris = _results_and_uris(results, image_uris)
    tables = [faces.to_arrow(image_uri=uri, run_id=run_id) for faces, uri in zip(listed, uris)]
    schema = FACES_SCHEMA
    for i, field in enumerate(FACES_SCHEMA):
        # One schema for all: a column null in any result is nullable in the whole table.
        if not field.nullable and any(t.schema.field(i).nullable for t in tables):
            schema = schema.set(i, field.with_nullable(True))
    table = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    index, names = _input_ids(listed, uris)
    counts = [len(r) for r in listed]
    table = table.append_column(pa.field("input_index", pa.int64(), nullable=False),
                                pa.array(np.repeat(np.asarray(index, np.int64), counts), pa.int64()))  # fmt: skip
    return table.append_column(pa.field("input_name", pa.string(), nullable=False),
                               pa.array([n for n, c in zip(names, counts) for _ in range(c)], pa.string()))  # fmt: skip


def faces_dataframe(
    results: ImageFaces | Iterable[ImageFaces],
    image_uris: Iterable[str | None] | None = None,
    *,
    run_id: str | None = None,
) -> "pandas.DataFrame":
    """Every input of ``results`` as rows of a pandas DataFrame, in input order: one row per face, and
    one row for each image without a face (none found, failed to read, too small), its face columns
    null, so that no input is silently dropped. Columns: ``input_index``, ``input_name``, ``status``
    (``ok`` or why the image did not run, as :class:`ImageFaces` says), ``error`` (why, null for
    ``ok``), then the job's ``faces`` columns (:func:`faces_table`). Integer columns stay integers:
    ``face_index`` is pandas' nullable ``Int32`` (null on the faceless rows), ``input_index`` ``int64``."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("faces_dataframe needs pandas (pip install pandas); faces_table() does not") from None
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..output import FACES_SCHEMA

    listed, uris = _results_and_uris(results, image_uris)
    faces = faces_table(listed, uris, run_id=run_id)
    counts = np.array([len(r) for r in listed], dtype=np.int64)
    rows = np.maximum(counts, 1)  # a faceless image keeps one row
    owner = np.repeat(np.arange(len(listed)), rows)  # the result of each row
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(listed) else np.zeros(0, np.int64)
    within = np.arange(int(rows.sum())) - np.repeat(np.cumsum(rows) - rows, rows)
    face_row = pa.array(first[owner] + within, pa.int64(), mask=counts[owner] == 0)
    picked = pc.take(faces, face_row)  # a null index: a row of nulls
    index, names = _input_ids(listed, uris)
    image_values = [r.image_columns(u, run_id=run_id) for r, u in zip(listed, uris)]
    per_image = {
        "input_index": pa.array(index, pa.int64()),
        "input_name": pa.array(names, pa.string()),
        "status": pa.array([r.status for r in listed], pa.string()),
        "error": pa.array([r.skipped for r in listed], pa.string()),
        **{name: pa.array([v[name] for v in image_values], pa.string()) for name in ("run_id", "image_uri", "image_sha256", "model_sha256")},
    }  # fmt: skip
    take = pa.array(owner, pa.int64())
    names_in_order = ["input_index", "input_name", "status", "error", *FACES_SCHEMA.names]
    table = pa.table({name: pc.take(per_image[name], take) if name in per_image else picked[name] for name in names_in_order})
    return table.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)

"""Reading URL manifests (CSV or Parquet) as the job reads them, and their checks before any work.

A manifest that the job could not read to its end must stop the run before it starts, not after the
other inputs' images were read (a CSV with one Latin-1 byte made Ray Data fail the run after 480 s):

- CSV: the whole file decodes as UTF-8 (a byte order mark is fine; UTF-16 is not), else the first bad
  line and byte are named; every row parses with the job's own options (:func:`csv_convert_options`);
- Parquet: the file's footer is read (a file that is no Parquet is named as such);
- both: the ``--url-column`` and ``--keep-columns`` exist, the URL column holds text (``string`` or
  ``large_string``, also dictionary-encoded: a binary, list or number column would be turned into paths
  like ``b'http://…'``), and there is at least one row (an empty manifest is refused like an empty
  folder).

Every problem is an :class:`InputError` naming the ``--input``, which the job reports with exit 2.
"""

from __future__ import annotations

import codecs

import pyarrow as pa

from img2pose_core.uris import redact_text, redact_uri

from .specs import InputError

__all__ = ["csv_convert_options", "url_type_problem", "check_manifest"]

_CHUNK = 8 << 20
_MAX_MESSAGE = 300
_UTF16_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
               (codecs.BOM_UTF16_BE, "UTF-16"))  # fmt: skip


def csv_convert_options(columns: list[str]):
    """How the job converts a CSV manifest: only ``columns``, every one as text (numbers or dates must not
    change how a cell reads)."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns)


def url_type_problem(name: str, kind: pa.DataType) -> str | None:
    """Why a column of type ``kind`` cannot be the URL column, or None for text."""
    text = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind)))  # fmt: skip
    if text or (pa.types.is_dictionary(kind) and url_type_problem(name, kind.value_type) is None):
        return None
    return (f"column {name!r} (--url-column) has type {kind}, not text (string or large_string): write the URLs "
            "as strings; other types are never turned into paths")  # fmt: skip


def _utf8_problem(f) -> str | None:
    """Where a binary stream first fails to decode as UTF-8 (line, byte, why), or None."""
    head = f.read(4)
    for bom, name in _UTF16_BOMS:
        if head.startswith(bom):
            return f"the file is {name} (byte order mark {bom.hex(' ').upper()}): save the manifest as UTF-8"
    offset = 3 if head.startswith(codecs.BOM_UTF8) else 0
    carry, lines, line_start = head[offset:], 0, offset
    while True:
        chunk = f.read(_CHUNK)
        data = carry + chunk
        try:
            _, used = codecs.utf_8_decode(data, "strict", not chunk)
        except UnicodeDecodeError as exc:
            newline = data.rfind(b"\n", 0, exc.start)
            column = exc.start - newline if newline >= 0 else offset + exc.start - line_start + 1
            line = lines + data.count(b"\n", 0, exc.start) + 1
            hint = "; it looks like Latin-1 or Windows-1252: convert it (iconv -f cp1252 -t utf-8)" if exc.reason != "unexpected end of data" else ""
            return (f"line {line} is not UTF-8: byte {column} of the line is 0x{data[exc.start]:02X} ({exc.reason}){hint}; "
                    "save the manifest as UTF-8 (a byte order mark is fine)")  # fmt: skip
        newline = data.rfind(b"\n", 0, used)
        if newline >= 0:
            line_start = offset + newline + 1
        lines += data.count(b"\n", 0, used)
        offset, carry = offset + used, data[used:]
        if not chunk:
            return None


def _csv_check(fs, path: str, shown: str, columns: list[str]) -> tuple[list[str], int]:
    """``(header names, rows)`` of a CSV manifest read with the job's options; InputError otherwise."""
    import pyarrow.csv as pacsv

    with fs.open(path, "rb") as f:
        problem = _utf8_problem(f)
    if problem:
        raise InputError(f"--input {shown}: {problem}")
    try:
        with fs.open(path, "rb") as f:
            names = list(pacsv.open_csv(f).schema.names)
        missing = [c for c in columns if c not in names]
        if missing:
            return names, -1
        with fs.open(path, "rb") as f:
            rows = sum(batch.num_rows for batch in pacsv.open_csv(f, convert_options=csv_convert_options(columns)))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return [], 0
        message = redact_text(str(exc))[:_MAX_MESSAGE]
        raise InputError(f"--input {shown}: cannot be read as CSV ({message}); fix that row") from None
    return names, rows


def _parquet_check(fs, path: str, shown: str, url_column: str) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except pa.ArrowInvalid as exc:
        raise InputError(f"--input {shown}: not a readable Parquet file ({redact_text(str(exc))[:_MAX_MESSAGE]})") from None
    if url_column in schema.names:
        problem = url_type_problem(url_column, schema.field(url_column).type)
        if problem:
            raise InputError(f"--input {shown}: {problem}")
    return list(schema.names), rows


def check_manifest(fs, path: str, uri: str, url_column: str, keep_columns=()) -> None:
    """Check a manifest as the job will read it (module docstring); raises :class:`InputError`."""
    shown = redact_uri(uri)
    wanted = [url_column] + [c for c in keep_columns if c != url_column]
    if uri.lower().endswith(".parquet"):
        names, rows = _parquet_check(fs, path, shown, url_column)
    else:
        names, rows = _csv_check(fs, path, shown, wanted)
    if url_column not in names:
        raise InputError(
            f"--input {shown}: manifest has no column {url_column!r} (columns: {', '.join(names) or 'none'}); "
            f"name the column of image URLs with --url-column"
        )
    missing = [c for c in keep_columns if c not in names]
    if missing:
        raise InputError(
            f"--input {shown}: manifest has no column {', '.join(map(repr, missing))} of --keep-columns "
            f"(columns: {', '.join(names)})"
        )
    if rows == 0:
        raise InputError(f"--input {shown}: the manifest holds no rows, only its header: nothing to annotate")

"""The Ray dataset of source rows for all inputs: prefixes listed in parallel tasks, manifests read by
Ray Data, and the grouping of sources by URI where inputs can name one file twice."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


from img2pose_core.storage import StorageConfig
from .listing import list_prefix, split_prefix
from .manifests import manifest_dataset
from .specs import SOURCE_COLUMNS, InputSpec, ManifestPolicy


# --- one row per distinct input --------------------------------------------------------------------
def needs_dedupe(specs: list[InputSpec]) -> bool:
    """Whether the inputs can name one file twice: manifests can, globs next to other inputs can.

    Prefixes, files and shards cannot (nested ones are refused, and a listing names each file once).
    """
    kinds = [s.kind for s in specs]
    return "manifest" in kinds or ("glob" in kinds and len(kinds) > 1)


_SEP = "\x1f"  # joins a source's fields into one value that sorts readable copies first


def with_choice(table: pa.Table) -> pa.Table:
    """The sources with a ``choice`` column: ``0|kind|status|error|kept`` for a source to read, ``1|...``
    for one that is not read. Grouped by URI, the smallest choice wins: a file that one input reads is
    read, even where another input names it in a way that is refused."""
    rank = pc.if_else(pc.is_in(table["kind"], pa.array(["file", "tar"])), "0", "1")
    kept = table["kept"] if "kept" in table.column_names else pa.array([""] * table.num_rows, pa.string())
    fields = [pc.fill_null(table[c].cast(pa.string()), "") for c in ("kind", "status", "error")] + [pc.fill_null(kept.cast(pa.string()), "")]
    choice = pc.binary_join_element_wise(rank, *fields, _SEP)
    return pa.table({"source_uri": table["source_uri"], "choice": choice})


def expand_groups(table: pa.Table) -> pa.Table:
    """Source rows from sources grouped by URI (``count()`` and ``min(choice)``, see :func:`with_choice`):
    one row per URI, and a ``duplicate`` row for each further copy."""
    counts = table["count()"].to_numpy()
    parts = [c.split(_SEP, 4) for c in table["min(choice)"].to_pylist()]
    extra = np.repeat(np.arange(table.num_rows), np.maximum(counts - 1, 0))
    n = len(extra)
    schema = pa.schema([(name, pa.string()) for name in SOURCE_COLUMNS])
    kept = pa.table(
        [table["source_uri"]] + [pa.array([p[i] for p in parts], pa.string()) for i in range(1, 5)], schema=schema
    )
    copies = pa.table(
        [table["source_uri"].take(pa.array(extra, pa.int64())), pa.array(["row"] * n, pa.string()),
         pa.array(["duplicate"] * n, pa.string()), pa.array([""] * n, pa.string()), pa.array([""] * n, pa.string())],
        schema=schema,
    )  # fmt: skip
    return pa.concat_tables([kept, copies])


def sources_dataset(
    specs: list[InputSpec], storage: StorageConfig, url_column: str, policy: ManifestPolicy, partitions: int,
    keep: list[str],
):
    """One Ray dataset of source rows for all inputs, prefixes listed in parallel tasks; the number of
    sources where the driver knows it (every input listed here: no sub-folder, no manifest), else None;
    and the number of image files among them where that is known (no tar shard), else None.

    Where inputs can name one file twice (manifests, globs beside other inputs), the rows are grouped
    by URI with a hash shuffle (exact whatever the size) and every copy after the first is counted as
    a ``duplicate``: one row per distinct input per run.
    """
    import ray.data

    datasets = []
    direct: list[dict] = []
    subprefixes: list[str] = []
    for spec in specs:
        if spec.kind == "manifest":
            datasets.append(manifest_dataset(spec, storage, url_column, policy, keep))
            continue
        rows, subdirs = split_prefix(spec, storage)
        direct.extend(rows)
        subprefixes.extend(subdirs)
    if direct:
        datasets.append(ray.data.from_items(direct))
    if subprefixes:
        listing = ray.data.from_items([{"prefix": p} for p in subprefixes], override_num_blocks=len(subprefixes))
        datasets.append(listing.flat_map(lambda row: list(list_prefix(row["prefix"], storage)), num_cpus=0.25))
    first, *rest = datasets
    ds = first.union(*rest) if rest else first
    known = len(direct) if len(datasets) == 1 and direct else None
    # Images to expect, for the progress display: known when every source is one listed file.
    expected = (sum(1 for r in direct if r["kind"] == "file")
                if known is not None and not any(r["kind"] == "tar" for r in direct) else None)  # fmt: skip
    if not needs_dedupe(specs):
        return ds, known, expected
    from ray.data.aggregate import Count, Min
    from ray.data.context import DataContext, ShuffleStrategy

    DataContext.get_current().shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    # One partition per CPU of the cluster: Ray's default of 200 costs seconds on a small run, and a
    # partition holds only URIs (about 100 bytes each).
    choices = ds.map_batches(with_choice, batch_format="pyarrow", num_cpus=0.25)
    grouped = choices.groupby("source_uri", num_partitions=partitions).aggregate(Count(), Min("choice"))
    return grouped.map_batches(expand_groups, batch_format="pyarrow", num_cpus=0.25), known, expected

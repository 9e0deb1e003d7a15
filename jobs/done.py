"""``--skip-existing`` at any corpus size: the inputs joined with what is already done, in Ray Data.

The done set is every ``image_uri`` with an ``ok`` row in the images table (plain Parquet: the job's
part files; Iceberg: the data files of the current snapshot). It is never gathered in one process:
Ray Data reads it from the files, keys each done URI by the source it comes from (the URI itself for a
file, the shard for a tar member) and groups the member names per key; a hash join then attaches to
each source the list of its done members (``done_members``: ``[""]`` for a done file, member names for
a shard, null for nothing done). Every partition of the join holds only its share of both sides, so
memory per worker is bounded by the corpus size over the partition count, not by the corpus.

The load stage then skips a done file before reading it, and the done members of a shard after
reading it (their bytes come in the same read as the others'). Both count as ``skipped``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from img2pose_core.uris import redact_uri

__all__ = ["done_keys", "with_source_key", "attach_done"]

_SHARD_MARK = ".tar#"


def done_keys(table: pa.Table) -> pa.Table:
    """``{key, member}`` rows for the ``ok`` rows of an images table slice (``image_uri``, ``status``).

    ``s3://b/s.tar#0001.jpg`` is member ``0001.jpg`` of key ``s3://b/s.tar``; any other URI is its own
    key with member ``""``. A URI that holds ``.tar#`` without being a member (an S3 key may hold ``#``)
    is given under both readings, so it is recognised either way.
    """
    ok = table.filter(pc.equal(table["status"], "ok"))["image_uri"].to_pylist()
    keys, members = [], []
    for uri in ok:
        keys.append(uri)
        members.append("")
        cut = uri.find(_SHARD_MARK)
        if cut > 0:
            keys.append(uri[: cut + 4])
            members.append(uri[cut + 5 :])
    return pa.table({"key": pa.array(keys, pa.string()), "member": pa.array(members, pa.string())})


def with_source_key(table: pa.Table) -> pa.Table:
    """The sources with their join ``key``: the URI as the images table stores it (secrets redacted)."""
    keys = [redact_uri(u) for u in table["source_uri"].to_pylist()]
    return table.append_column("key", pa.array(keys, pa.string()))


def attach_done(sources, done_files: list[str], filesystem, partitions: int):
    """``sources`` (a Ray dataset) with a ``done_members`` column; ``done_files`` are Parquet files of
    images rows. Without done files, every source gets null."""
    import ray.data
    from ray.data.aggregate import Unique

    if not done_files:
        return sources.map_batches(_no_done, batch_format="pyarrow", num_cpus=0.25)
    done = ray.data.read_parquet(
        done_files, filesystem=filesystem, columns=["image_uri", "status"], partitioning=None,
        override_num_blocks=max(1, min(len(done_files), partitions * 4)),
    )  # fmt: skip
    grouped = (
        done.map_batches(done_keys, batch_format="pyarrow", num_cpus=0.25)
        .groupby("key", num_partitions=partitions)
        .aggregate(Unique(on="member", alias_name="done_members"))
    )
    keyed = sources.map_batches(with_source_key, batch_format="pyarrow", num_cpus=0.25)
    joined = keyed.join(grouped, join_type="left_outer", num_partitions=partitions, on=("key",))
    return joined.map_batches(_drop_key, batch_format="pyarrow", num_cpus=0.25)


def _no_done(table: pa.Table) -> pa.Table:
    return table.append_column("done_members", pa.nulls(table.num_rows, pa.list_(pa.string())))


def _drop_key(table: pa.Table) -> pa.Table:
    if "done_members" in table.column_names:
        members = table["done_members"]
        if not pa.types.is_list(members.type):  # an all-null block can come back as a null column
            table = table.set_column(
                table.column_names.index("done_members"), "done_members", pa.nulls(table.num_rows, pa.list_(pa.string()))
            )
    return table.drop_columns([c for c in ("key",) if c in table.column_names])


def is_done(members: Iterable[object] | None) -> bool:
    """Whether a file source's ``done_members`` says it is done."""
    return members is not None and "" in list(members)


def done_member_names(members: Iterable[object] | None) -> set[str]:
    """The done member names of a shard source's ``done_members``."""
    if members is None:
        return set()
    return {str(m) for m in (members.tolist() if isinstance(members, np.ndarray) else members) if m}

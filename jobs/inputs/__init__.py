"""Inputs of the annotation job: folders/prefixes, globs, WebDataset tar shards and URL manifests.

Every ``--input`` becomes a stream of *sources*, rows ``{"source_uri", "kind", "status", "error"}``:

- ``kind="file"``: one file to read and decode; ``kind="tar"``: a shard of many;
- ``kind="row"``: an entry that is not read, with the ``status`` it gets and why (``error``): a named
  pipe, socket or device (``not_a_file``), a symbolic link to a folder (``not_a_file``: not followed),
  a manifest entry the operator did not allow (``not_allowed``), or an entry that is counted in the
  run manifest instead of the tables (``NOT_WRITTEN`` of :mod:`img2pose_core.output`: markers, sidecars, empty manifest cells, copies).

So every file under an input and every manifest row is accounted for. Which file is what is decided
from names and listings alone (:func:`classify_directory`), without reading anything. Folders are
listed in parallel Ray tasks, one per sub-prefix, so the driver never holds the listing of a huge
prefix; manifests are read by Ray Data itself. Validation (does it exist, is there anything in it,
do inputs overlap; a manifest read whole as the job will read it: :mod:`.manifest_files`) happens
before any work starts. A tar shard's entries are listed once it is read (:mod:`.shards`), and a
container that yields nothing (an empty shard, bytes that are no tar, a folder emptied since the
check) gets a row of its own.
"""

from __future__ import annotations

from .checks import validate_inputs
from .datasets import expand_groups, needs_dedupe, sources_dataset, with_choice
from .listing import list_prefix, split_prefix
from .manifests import http_host_refusal, manifest_dataset, resolve_manifest_entries, resolve_manifest_entry
from .specs import (
    IMAGE_EXTENSIONS,
    MANIFEST_SCHEMES,
    SIDECAR_EXTENSIONS,
    SOURCE_COLUMNS,
    InputError,
    InputSpec,
    ManifestPolicy,
    classify_directory,
    classify_input,
    glob_base,
    is_inside,
    source_kind,
    source_row,
)
from img2pose_core.storage import uri_of

__all__ = [
    "InputError", "InputSpec", "IMAGE_EXTENSIONS", "SIDECAR_EXTENSIONS", "MANIFEST_SCHEMES", "ManifestPolicy",
    "classify_input", "classify_directory", "validate_inputs", "uri_of", "list_prefix", "split_prefix",
    "source_kind", "is_inside", "glob_base", "resolve_manifest_entry", "resolve_manifest_entries",
    "http_host_refusal", "expand_groups", "with_choice", "needs_dedupe", "source_row", "SOURCE_COLUMNS",
    "sources_dataset", "manifest_dataset",
]  # fmt: skip

"""Reading the job's sources: the core's bounded reader (:mod:`img2pose_core.storage.reads`), which the
Python API uses too, so that a path or URL gets the same bytes and the same status from either.

Each source (an image or a tar shard) is read in its own thread, several at a time
(:func:`read_concurrently`), and the load stage decodes whatever arrives first: one slow host never
holds up the other sources of its batch. Every read has a connect timeout and an idle timeout on its
sockets, retries only what can succeed later (throttling, 5xx, resets, timeouts: not a name that does
not resolve or a refused connection), and the whole read of one input, retries included, ends by
``--read-timeout``: a read still running then is abandoned and the input gets an ``unreadable`` row
that says so.

- Local files: regular files only (a named pipe, a socket or a device gets a ``not_a_file`` row
  instead of a hang); a file whose real location is inside the job's output is ``not_allowed``.
- ``http(s)://``: redirects followed by hand, at most five; every hop's host, and every address it
  resolves to, checked before and when connecting (no cloud metadata service, whatever the spelling:
  :mod:`img2pose_core.storage.netpolicy`); a body longer than the size cap is ``too_large``.
- Other schemes (``s3://``, ``gs://`` ...) go through fsspec with the job's store options.
"""

from __future__ import annotations

from img2pose_core.storage.reads import ReadFailure, ReadLimits, read_concurrently, read_source

__all__ = ["ReadFailure", "ReadLimits", "read_source", "read_concurrently"]

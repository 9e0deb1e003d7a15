"""The job's storage: :mod:`img2pose_core.storage` and :func:`img2pose_core.uris.join_uri`, under their old names.

Nothing here is Ray-specific; import from those modules instead.
"""

from __future__ import annotations

from img2pose_core.storage import StorageConfig, exception_chain, is_transient, with_retries
from img2pose_core.uris import join_uri

__all__ = ["StorageConfig", "is_transient", "with_retries", "join_uri", "exception_chain"]

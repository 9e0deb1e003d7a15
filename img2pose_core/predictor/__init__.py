"""Batched img2pose inference on lists of images of any sizes, with every face's derived geometry.

The network runs in batches of images of similar aspect ratio (little padding) under
``torch.inference_mode``; all per-face geometry (angles, landmarks, alignment) is then computed for the
whole batch at once in float64. Images come as pixels (arrays, tensors, PIL images) or as paths and URLs,
which are read and decoded as the annotation job decodes them (:mod:`img2pose_core.imageio`). Results
convert to rows of the job's ``faces`` table (:meth:`ImageFaces.to_arrow`, :func:`faces_table`), or to one
pandas DataFrame with a row for every input (:meth:`Predictor.predict_dataframe`, :func:`faces_dataframe`).

One module per concept: :mod:`.predictor` (the :class:`Predictor`), :mod:`.inputs` (reading and
converting images), :mod:`.batching` (network sizes, which images share a batch), :mod:`.device` (device,
precision, copies to the device), :mod:`.loading` (the compiled, shared model), :mod:`.describe` (each
face's geometry), :mod:`.faces` (the result, :class:`ImageFaces`, and its table rows), :mod:`.tables`
(several results as one table or DataFrame) and :mod:`.progress` (the bar of ``progress=True``).
"""

from __future__ import annotations

from .batching import padded_size, resized_size
from .device import resolve_device
from .faces import ImageFaces
from .inputs import ImageInput  # noqa: F401 - the type of predict's images, for callers' annotations
from .loading import COMPILE_MODES, compile_mode  # noqa: F401 - docs/performance.md names compile_mode here
from .predictor import Predictor
from .tables import faces_dataframe, faces_table

__all__ = ["ImageFaces", "Predictor", "faces_table", "faces_dataframe", "resolve_device", "resized_size", "padded_size"]

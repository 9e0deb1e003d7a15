"""The faces found in one image (:class:`ImageFaces`) and their rows of the job's ``faces`` table.

One image's faces convert with :meth:`ImageFaces.to_arrow` / :meth:`ImageFaces.to_pandas`, several
images' with :func:`~img2pose_core.predictor.tables.faces_table` and
:func:`~img2pose_core.predictor.tables.faces_dataframe`; the rows are built as the job builds them
(:mod:`img2pose_core.face_rows`). pyarrow and pandas are imported only when a conversion runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..uris import redact_uri

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["ImageFaces"]


@dataclass
class ImageFaces:
    """The faces found in one image, as columns (K faces). Coordinates are pixels of the input image.

    ``poses`` are img2pose's global poses (rotation vector, translation) exactly as the authors' model
    gives them: for the camera of the resized image the network saw (``network_size``), which is the
    camera of the input image (focal w + h, centre (w // 2, h // 2)) up to the rounding of the resize.
    ``landmarks_5`` / ``landmarks_68`` are projected in the network's camera and scaled to input pixels,
    so they agree with the boxes exactly.

    An image the network did not run on has no faces, ``skipped`` (why, for people) and ``status`` (the
    job's ``images`` table status: ``too_small``, or ``unreadable``, ``not_an_image``, ``corrupt``,
    ``unsupported``, ``too_large`` for a path that could not be read or decoded); otherwise ``status`` is
    ``ok`` and ``skipped`` None.

    ``input_index`` (the position in the call's inputs) and ``input_name`` (a path or URL as given, or
    ``<array 3>``, ``<PIL 0>``, ``<tensor 1>`` for pictures) tell which input a result is for, so the
    results of several in-memory images can be told apart; :meth:`Predictor.predict` sets both.
    """

    width: int
    height: int
    network_size: tuple[int, int]  # (width, height) of the resized image
    scores: np.ndarray  # (K,)
    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2
    poses: np.ndarray  # (K, 6) rx, ry, rz, tx, ty, tz
    yaw_pitch_roll: np.ndarray  # (K, 3) degrees
    landmarks_5: np.ndarray  # (K, 5, 2)
    align_matrices: np.ndarray  # (K, 2, 3) image -> crop
    landmarks_68: np.ndarray | None = None  # (K, 68, 2) on request
    # Why the network did not run on the image (e.g. it resizes to zero pixels); None when it ran.
    skipped: str | None = None
    status: str = "ok"  # or why it did not run, in the words of the job's images table
    # Where the image came from, as the job's tables store it (local paths absolute, URL credentials
    # redacted), and the SHA-256 of its bytes: set for path inputs, None for pixels.
    image_uri: str | None = None
    image_sha256: str | None = None
    model_sha256: str | None = None  # of the bundle's weights; set by Predictor.predict
    input_index: int | None = None  # position in the Predictor.predict call's inputs
    input_name: str | None = None  # the path or URL as given (redacted), or e.g. "<array 3>"

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(
        cls,
        width: int,
        height: int,
        network_size: tuple[int, int],
        skipped: str | None = None,
        *,
        status: str | None = None,
    ) -> "ImageFaces":
        """No faces in a ``width x height`` image; ``status`` defaults to ``ok``, or ``too_small`` with ``skipped``."""
        z = np.zeros
        status = status or ("ok" if skipped is None else "too_small")
        return cls(width, height, network_size, z(0, np.float32), z((0, 4), np.float32), z((0, 6)), z((0, 3)),
                   z((0, 5, 2)), z((0, 2, 3)), None, skipped, status)  # fmt: skip

    def to_json(self) -> list[dict[str, Any]]:
        """The faces as JSON-ready dicts (``score``, ``box``, ``pose``, ``yaw``, ``pitch``, ``roll`` ...)."""
        faces = []
        for i in range(len(self)):
            face = {
                "score": float(self.scores[i]),
                "box": [float(v) for v in self.boxes[i]],
                "pose": [float(v) for v in self.poses[i]],
                "yaw": float(self.yaw_pitch_roll[i, 0]),
                "pitch": float(self.yaw_pitch_roll[i, 1]),
                "roll": float(self.yaw_pitch_roll[i, 2]),
                "landmarks_5": self.landmarks_5[i].round(3).tolist(),
            }
            if self.landmarks_68 is not None:
                face["landmarks_68"] = self.landmarks_68[i].round(3).tolist()
            faces.append(face)
        return faces

    def to_arrow(
        self,
        *,
        image_uri: str | None = None,
        image_sha256: str | None = None,
        run_id: str | None = None,
        model_sha256: str | None = None,
    ) -> "pyarrow.Table":
        """The faces as rows of the annotation job's ``faces`` table: one row per face, the columns and
        types of :data:`img2pose_core.output.FACES_SCHEMA` in its order (``docs/schema.md``).

        ``image_uri``, ``image_sha256`` and ``model_sha256`` default to this result's own (the first two
        are known for path inputs only), ``run_id`` to null; ``crop_uri`` is always null (the predictor
        writes no crops). A column left null is declared nullable; with all four known, the schema is
        ``FACES_SCHEMA`` itself. ``image_uri`` is stored with its credentials redacted, as the job does.
        """
        return _faces_arrow(self, self.image_columns(image_uri, image_sha256, run_id, model_sha256))

    def image_columns(
        self,
        image_uri: str | None = None,
        image_sha256: str | None = None,
        run_id: str | None = None,
        model_sha256: str | None = None,
    ) -> dict[str, str | None]:
        """The per-image columns of this result's face rows: each argument, else this result's own
        (``run_id`` null); ``image_uri`` redacted as the job stores it."""
        return {
            "run_id": run_id,
            "image_uri": redact_uri(image_uri) if image_uri is not None else self.image_uri,
            "image_sha256": image_sha256 if image_sha256 is not None else self.image_sha256,
            "model_sha256": model_sha256 if model_sha256 is not None else self.model_sha256,
        }

    def to_pandas(self, **to_arrow_kwargs: Any) -> "pandas.DataFrame":
        """:meth:`to_arrow` as a pandas DataFrame (``landmarks_5`` and ``align_matrix`` cells are arrays)."""
        try:
            import pandas  # noqa: F401 - optional: only this method needs it
        except ImportError:
            raise ImportError("ImageFaces.to_pandas needs pandas (pip install pandas); to_arrow() does not") from None
        return self.to_arrow(**to_arrow_kwargs).to_pandas()


def _faces_arrow(faces: ImageFaces, values: dict[str, str | None]) -> "pyarrow.Table":
    """The faces table rows of ``faces``; ``values`` holds the per-image string columns (None: null)."""
    from ..face_rows import face_lists, face_rows

    return face_rows(face_lists([faces])[1], values)


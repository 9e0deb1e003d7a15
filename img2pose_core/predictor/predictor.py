"""The :class:`Predictor`: img2pose on a device, run over lists of images of any sizes.

It puts the pieces together: inputs are read and converted (:mod:`.inputs`), grouped into batches of one
padded network size (:mod:`.batching`), copied to the device and run in the chosen precision
(:mod:`.device`) by the process's shared model (:mod:`.loading`) under ``torch.inference_mode``; each
face's geometry is then derived for the whole batch at once (:mod:`.describe`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from .. import alignment
from ..imageio import DEFAULT_MAX_PIXELS
from ..model import Img2Pose
from .batching import plan_batches, reported_sizes
from .describe import describe_faces
from .device import DeviceCopies, Upload, autocast, resolve_device, resolve_precision
from .faces import ImageFaces
from ..storage.netpolicy import AddressPolicy
from ..storage.reads import ReadLimits
from .inputs import ImageInput, as_input_list, file_byte_cap, input_name, load_images, stored_uri
from .loading import ModelChoices, compile_mode, load_model
from .progress import progress_bar

if TYPE_CHECKING:
    import pandas

    from ..bundle import Bundle

__all__ = ["Predictor"]

# How many batches of images one window of predict reads and decodes before running them.
WINDOW_BATCHES = 8


class Predictor:
    """img2pose on a device, loaded once per process and bundle.

    ``precision`` ``"bf16"``/``"fp16"`` autocasts the network on CUDA; the pose geometry always runs in
    float64. ``threshold`` keeps faces scoring above it (it also skips the pose branch below it).
    Predictors with the same bundle, device and settings share one model per process; ``shared=False``
    gives this one its own, whose network input size :meth:`resize` may then change.

    Paths and URLs are read as the annotation job reads them: ``max_bytes`` caps a file or body (None:
    the job's cap, 8 bytes a pixel of ``max_pixels``, at least 64 MiB; 800 MB at the default),
    ``read_timeout`` (seconds, 180 like ``--read-timeout``) bounds the whole read of one input, retries
    included, and ``address_policy`` says which network addresses may be fetched (default: never a
    cloud metadata service; private ranges too when ``$IMG2POSE_BLOCK_PRIVATE_ADDRESSES`` is 1).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        *,
        device: str | torch.device | None = "auto",
        precision: str = "fp32",
        min_size: int | None = None,
        max_size: int | None = None,
        threshold: float | None = None,
        max_faces: int | None = None,
        rpn_pre_nms_top_n: int | None = None,
        rpn_post_nms_top_n: int | None = None,
        crop_size: int = 112,
        align_mode: alignment.AlignMode = "pose",
        landmarks_68: bool = False,
        batch_size: int = 8,
        channels_last: bool | None = None,
        compile: bool | str = False,
        shared: bool = True,
        max_bytes: int | None = None,
        read_timeout: float = 180.0,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        from ..bundle import Bundle, open_bundle

        self.bundle: Bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        alignment.template_for(crop_size, align_mode)  # validates the pair early
        self.crop_size, self.align_mode, self.landmarks_68 = crop_size, align_mode, landmarks_68
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        s = self.bundle.settings
        self.settings: ModelChoices = {
            "min_size": min_size or s.min_size,
            "max_size": max_size or s.max_size,
            "rpn_pre_nms_top_n": rpn_pre_nms_top_n or s.rpn_pre_nms_top_n,
            "rpn_post_nms_top_n": rpn_post_nms_top_n or s.rpn_post_nms_top_n,
            "max_faces": max_faces if max_faces is not None else s.max_faces,
        }
        if self.settings["min_size"] < 32 or self.settings["max_size"] < self.settings["min_size"]:
            raise ValueError(f"need 32 <= min_size <= max_size, got {self.settings['min_size']}/{self.settings['max_size']}")
        # NHWC: faster convolutions on GPUs (tensor cores) and on CPU (oneDNN, about 15% on the
        # benchmark machine), and the CPU RoI pooling gathers whole channel vectors from it.
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.compile = compile_mode(compile)
        self.threshold = float(threshold if threshold is not None else s.threshold)
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), not {self.threshold}")
        self.shared = bool(shared)
        if (max_bytes is not None and max_bytes < 1) or not read_timeout > 0:
            raise ValueError(f"need max_bytes >= 1 (or None) and read_timeout > 0, got {max_bytes}/{read_timeout}")
        self.max_bytes, self.read_timeout = max_bytes, float(read_timeout)
        self.address_policy = address_policy or AddressPolicy.from_env()
        self.model = self._load_model()
        self._copies = DeviceCopies(self.device)
        self._points_5 = torch.as_tensor(self.bundle.points_5, dtype=torch.float64, device=self.device)
        self._points_68 = torch.as_tensor(self.bundle.points_68, dtype=torch.float64, device=self.device)

    @property
    def model_sha256(self) -> str:
        """The SHA-256 of the bundle's weights, which every result carries."""
        return self.bundle.model_sha256

    def _load_model(self) -> Img2Pose:
        return load_model(self.bundle, self.device, self.settings, channels_last=self.channels_last,
                          compile=self.compile, shared=self.shared)  # fmt: skip

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the network input size of a predictor made with ``shared=False`` (its own model), e.g.
        per image as the original multi-scale evaluation does."""
        if self.shared:
            raise ValueError("resize() needs a Predictor made with shared=False: its model is shared with other predictors")
        if min_size < 1 or max_size < min_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}/{max_size}")
        self.settings["min_size"], self.settings["max_size"] = int(min_size), int(max_size)
        self.model.configure(min_size=int(min_size), max_size=int(max_size))

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        original_sizes: Sequence[tuple[int, int] | None] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_options: dict | None = None,
        progress: bool = False,
    ) -> list[ImageFaces]:
        """Faces of each image, in input order: always a list, one :class:`ImageFaces` per input.

        ``images`` is a list (or any iterable) of images, or one image alone, which is one input (a list
        of one result comes back): ``predict("photo.jpg")`` runs one file. An image is an RGB
        ``(H, W, 3)`` uint8 array, a ``(3, H, W)`` tensor (uint8, or float in [0, 1]), a PIL image (turned
        upright by its EXIF orientation, as files are; pass an array to use pixels as they are), or a
        path: a ``str`` or ``os.PathLike`` local path, a ``file://`` URI, an ``http(s)://`` URL or any
        fsspec URL (``s3://`` ...; ``storage_options`` go to fsspec, and their ``headers`` to http). A
        stack, an ``(N, H, W, 3)`` array or ``(N, 3, H, W)`` tensor, is its N images. Paths are read by
        the annotation job's bounded reader (regular files only, the predictor's ``max_bytes`` and
        ``read_timeout``, no cloud metadata address; several at a time) and decoded as the job decodes
        them (:func:`~img2pose_core.imageio.decode_image`: EXIF orientation, the first frame of an
        animation, nothing declaring more than ``max_pixels`` pixels); their results carry
        ``image_uri`` and ``image_sha256``. Lists may mix paths and pixels. Every result carries
        ``input_index`` (its position in ``images``) and ``input_name`` (the path or URL as given, or
        ``<array 3>``, ``<PIL 0>``, ``<tensor 1>``).

        Images are read and run a window of ``8 * batch_size`` at a time, so memory stays bounded on
        long lists; images of the same padded network size share a batch. ``progress=True`` shows a
        bar (images done, images/s, ETA) on stderr; it is off by default.

        A path that cannot be read or decoded raises nothing: as for an image too elongated to run
        (``too_small``), its result has no faces, ``status`` is the job's status for it (``unreadable``,
        ``not_an_image``, ``corrupt``, ``unsupported``, ``too_large``, ``not_a_file`` for a folder, named
        pipe, socket or device, ``not_allowed`` for a metadata address) and ``skipped`` names the path
        and says why; one bad file never costs the others their faces. Check ``status`` before reading
        an empty result as "no face". Bytes and any other type raise ``TypeError``, a badly shaped array
        ``ValueError``.

        ``original_sizes`` (``(width, height)`` per image) says that an image is a reduced copy (e.g.
        decoded at JPEG draft scale) of a picture of that size: coordinates are then reported in the
        picture's pixels.
        """
        inputs = as_input_list(images)
        if original_sizes is not None and len(original_sizes) != len(inputs):
            raise ValueError(f"got {len(original_sizes)} original_sizes for {len(inputs)} images")
        batch = batch_size or self.batch_size
        window = WINDOW_BATCHES * batch
        results: list[ImageFaces] = []
        with progress_bar(len(inputs), progress) as bar:
            for start in range(0, len(inputs), window):
                part = inputs[start : start + window]
                sizes = original_sizes[start : start + window] if original_sizes is not None else None
                results += self._predict_window(part, batch, sizes, max_pixels, storage_options, bar.update)
        for i, (image, result) in enumerate(zip(inputs, results)):
            result.model_sha256, result.input_index, result.input_name = self.model_sha256, i, input_name(image, i)
        return results

    def predict_dataframe(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        image_uris: Iterable[str | None] | None = None,
        batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_options: dict | None = None,
        progress: bool = False,
    ) -> "pandas.DataFrame":
        """:meth:`predict` as one pandas DataFrame (:func:`~img2pose_core.predictor.faces_dataframe`): one
        row per face, and one row with null face columns for each image without a face (none found, or
        not read: its ``status`` and ``error`` say why), so no input is dropped. Columns: ``input_index``,
        ``input_name``, ``status``, ``error``, then the job's ``faces`` columns. ``image_uris`` (one per
        image, None to keep its own) names in-memory images in ``input_name`` and ``image_uri``."""
        from .tables import faces_dataframe

        results = self.predict(images, batch_size=batch_size, max_pixels=max_pixels,
                               storage_options=storage_options, progress=progress)  # fmt: skip
        return faces_dataframe(results, image_uris)

    def _predict_window(
        self,
        images: Sequence[ImageInput],
        batch_size: int,
        original_sizes: Sequence[tuple[int, int] | None] | None,
        max_pixels: int,
        storage_options: dict | None,
        done: Callable[[int], object],
    ) -> list[ImageFaces]:
        """The faces of each image of one window, in order; ``done(n)`` is told of every n images finished."""
        results: dict[int, ImageFaces] = {}  # by input index: every image gets one below
        limits = ReadLimits(timeout_s=self.read_timeout, addresses=self.address_policy,
                            max_bytes=self.max_bytes if self.max_bytes is not None else file_byte_cap(max_pixels))  # fmt: skip
        tensors, hashes, failed = load_images(images, max_pixels, storage_options, limits)
        for i, exc in failed.items():
            results[i] = ImageFaces.empty(0, 0, (0, 0), exc.message, status=exc.status)
        # The images that loaded: only they are planned into batches or found too small.
        loaded = {i: t for i, t in enumerate(tensors) if t is not None}
        report = {i: size for i, size in enumerate(reported_sizes(tensors, original_sizes)) if size is not None}
        lo, hi = self.settings["min_size"], self.settings["max_size"]
        chunks, too_small = plan_batches(tensors, lo, hi, batch_size)
        for i, (net, reason) in too_small.items():
            results[i] = ImageFaces.empty(report[i][0], report[i][1], net, reason)
        done(len(failed) + len(too_small))
        if chunks:
            upload = self._copies.upload([loaded[i] for i in chunks[0]])
            for n, chunk in enumerate(chunks):
                current = upload
                if n + 1 < len(chunks):
                    # Queued before this chunk's compute: on a GPU the copy runs alongside it.
                    upload = self._copies.upload([loaded[i] for i in chunks[n + 1]])
                faces = self._predict_batch(current, [report[i] for i in chunk])
                for i, f in zip(chunk, faces):
                    results[i] = f
                done(len(chunk))
        ordered = [results[i] for i in range(len(images))]
        for i, (image, result) in enumerate(zip(images, ordered)):
            if isinstance(image, (str, os.PathLike)):
                result.image_uri, result.image_sha256 = stored_uri(os.fsdecode(image)), hashes.get(i)
        return ordered

    @torch.inference_mode()
    def _predict_batch(self, upload: Upload, report_sizes: list[tuple[int, int]]) -> list[ImageFaces]:
        """The faces of one uploaded batch of images of one padded network size."""
        images = self._copies.ready(upload)
        batch = [img.float().div_(255.0) if img.dtype == torch.uint8 else img.float() for img in images]
        with autocast(self.precision):
            detections = self.model(batch, threshold=self.threshold)
        return describe_faces(
            detections,
            report_sizes,
            points_5=self._points_5,
            points_68=self._points_68 if self.landmarks_68 else None,
            crop_size=self.crop_size,
            align_mode=self.align_mode,
            device=self.device,
        )

"""Batched img2pose inference on lists of images of any sizes, with every face's derived geometry.

The network runs in batches of images of similar aspect ratio (little padding) under
``torch.inference_mode``; all per-face geometry (angles, landmarks, alignment) is then computed for the
whole batch at once in float64. Images come as pixels (arrays, tensors, PIL images) or as paths and URLs,
which are read and decoded as the annotation job decodes them (:mod:`img2pose_core.imageio`). Results
convert to rows of the job's ``faces`` table (:meth:`ImageFaces.to_arrow`, :func:`faces_table`).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import alignment, geometry
from .imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_image_bytes, upright_rgb_array
from .model import Img2Pose
from .uris import normalise_local, redact_uri, scheme_of

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["ImageFaces", "Predictor", "faces_table", "resolve_device", "resized_size", "padded_size"]

# Pixels, or where to read them: a local path, a file:// URI or any fsspec URL.
ImageInput = np.ndarray | Image.Image | Tensor | str | os.PathLike

_MODEL_CACHE: dict[tuple, Img2Pose] = {}
_MODEL_CACHE_LOCK = threading.Lock()


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
        values = {
            "run_id": run_id,
            "image_uri": redact_uri(image_uri) if image_uri is not None else self.image_uri,
            "image_sha256": image_sha256 if image_sha256 is not None else self.image_sha256,
            "model_sha256": model_sha256 if model_sha256 is not None else self.model_sha256,
        }
        return _faces_arrow(self, values)

    def to_pandas(self, **to_arrow_kwargs: Any) -> "pandas.DataFrame":
        """:meth:`to_arrow` as a pandas DataFrame (``landmarks_5`` and ``align_matrix`` cells are arrays)."""
        try:
            import pandas  # noqa: F401 - optional: only this method needs it
        except ImportError:
            raise ImportError("ImageFaces.to_pandas needs pandas (pip install pandas); to_arrow() does not") from None
        return self.to_arrow(**to_arrow_kwargs).to_pandas()


def _faces_arrow(faces: ImageFaces, values: dict[str, str | None]) -> "pyarrow.Table":
    """The faces table rows of ``faces``; ``values`` holds the per-image string columns (None: null)."""
    from .face_rows import face_lists, face_rows

    return face_rows(face_lists([faces])[1], values)


def faces_table(
    results: Sequence[ImageFaces], image_uris: Sequence[str | None] | None = None, *, run_id: str | None = None
) -> "pyarrow.Table":
    """The faces of several results as one table of the job's ``faces`` schema, in input order (see
    :meth:`ImageFaces.to_arrow`). ``image_uris``, one per result, name the images whose result does not
    (pixels given); None keeps the result's own. Images without faces, and those that did not run
    (``status`` not ``ok``), have no rows."""
    import pyarrow as pa

    from .output import FACES_SCHEMA

    if image_uris is not None and len(image_uris) != len(results):
        raise ValueError(f"got {len(image_uris)} image_uris for {len(results)} results")
    uris = list(image_uris) if image_uris is not None else [None] * len(results)
    tables = [faces.to_arrow(image_uri=uri, run_id=run_id) for faces, uri in zip(results, uris)]
    schema = FACES_SCHEMA
    for i, field in enumerate(FACES_SCHEMA):
        # One schema for all: a column null in any result is nullable in the whole table.
        if not field.nullable and any(t.schema.field(i).nullable for t in tables):
            schema = schema.set(i, field.with_nullable(True))
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return dev


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height) the network's transform resizes a ``width x height`` image to."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    # interpolate(recompute_scale_factor=True) floors size * scale.
    return int(math.floor(width * scale)), int(math.floor(height * scale))


def padded_size(width: int, height: int, divisor: int = 32) -> tuple[int, int]:
    """(width, height) of the zero-padded network input of a resized ``width x height`` image."""
    return -(-width // divisor) * divisor, -(-height // divisor) * divisor


def _stored_uri(uri: str) -> str:
    """``uri`` as the job's tables store it: local paths absolute, URL credentials redacted."""
    return normalise_local(uri) if scheme_of(uri) in ("", "file") else redact_uri(uri)


def _read_path(path: str | os.PathLike, max_pixels: int, storage_options: dict | None) -> tuple[np.ndarray, str]:
    """Pixels and SHA-256 of the image at ``path``, read and decoded as the job does; an
    :class:`~img2pose_core.imageio.ImageDecodeError` whose message names the path when it cannot be."""
    text = os.fsdecode(path)
    data = read_image_bytes(text, storage_options=storage_options)  # its errors name the path already
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.status, f"{redact_uri(text)}: {exc.message}") from None
    return decoded.pixels, hashlib.sha256(data).hexdigest()


def _to_chw_float(image: np.ndarray | Image.Image | Tensor) -> Tensor:
    if isinstance(image, Image.Image):
        image = upright_rgb_array(image)  # as decode_image turns a file: the same picture either way
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
        pixels = image[..., :3]
        if not pixels.flags.writeable or not pixels.flags.c_contiguous:
            pixels = np.array(pixels, order="C")  # torch wants its own writable memory
        return torch.from_numpy(pixels).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a tensor of shape (3, H, W), got {tuple(image.shape)}")
        return image
    raise TypeError(
        f"unsupported image type {type(image).__name__}; pass a numpy array, PIL image, tensor, path or URL"
    )


COMPILE_MODES = ("off", "dynamic", "reduce-overhead", "max-autotune")


def compile_mode(value: bool | str | None) -> str:
    """The backbone's ``torch.compile`` mode: ``off``; ``dynamic`` (one graph for every size, ``True``);
    ``reduce-overhead`` or ``max-autotune`` (a static graph per padded network size, CUDA graphs on GPU)."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "dynamic"
    if value not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {value!r}")
    return str(value)


class Predictor:
    """img2pose on a device, loaded once per process and bundle.

    ``precision`` ``"bf16"``/``"fp16"`` autocasts the network on CUDA; the pose geometry always runs in
    float64. ``threshold`` keeps faces scoring above it (it also skips the pose branch below it).
    Predictors with the same bundle, device and settings share one model per process; ``shared=False``
    gives this one its own, whose network input size :meth:`resize` may then change.
    """

    def __init__(
        self,
        bundle,
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
        align_mode: str = "pose",
        landmarks_68: bool = False,
        batch_size: int = 8,
        channels_last: bool | None = None,
        compile: bool | str = False,
        shared: bool = True,
    ) -> None:
        from .bundle import Bundle, open_bundle

        self.bundle: Bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        self.device = resolve_device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            precision = "fp32"  # CPU autocast is slower than fp32 for this network
        self.precision = precision
        alignment.template_for(crop_size, align_mode)  # validates the pair early
        self.crop_size, self.align_mode, self.landmarks_68 = crop_size, align_mode, landmarks_68
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        s = self.bundle.settings
        self.settings = {
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
        self.model = self._load_model()
        self._copy_stream = None  # CUDA stream of host-to-device copies, made on first use
        self._points_5 = torch.as_tensor(self.bundle.points_5, dtype=torch.float64, device=self.device)
        self._points_68 = torch.as_tensor(self.bundle.points_68, dtype=torch.float64, device=self.device)

    @property
    def model_sha256(self) -> str:
        return self.bundle.model_sha256

    def _load_model(self) -> Img2Pose:
        key = (
            self.bundle.model_sha256, str(self.bundle.root), str(self.device),
            tuple(sorted(self.settings.items())), self.channels_last, self.compile,
        )  # fmt: skip
        with _MODEL_CACHE_LOCK:
            model = _MODEL_CACHE.get(key) if self.shared else None
            if model is None:
                model = self.bundle.build_model(**self.settings).to(self.device).eval()
                if self.channels_last:
                    model.backbone.to(memory_format=torch.channels_last)
                    model.channels_last = True
                if self.compile == "dynamic":
                    # Image sizes vary: dynamic shapes avoid a recompilation per size.
                    model.backbone = torch.compile(model.backbone, dynamic=True)
                elif self.compile != "off":
                    # One graph per padded network size (batches only ever hold one size): on CUDA both
                    # modes replay it as a CUDA graph; max-autotune also searches kernel configurations.
                    model.backbone = torch.compile(model.backbone, mode=self.compile, dynamic=False)
                if self.shared:
                    _MODEL_CACHE[key] = model
        return model

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
        images: Sequence[ImageInput],
        *,
        batch_size: int | None = None,
        original_sizes: Sequence[tuple[int, int] | None] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_options: dict | None = None,
    ) -> list[ImageFaces]:
        """Faces of each image, in input order. Images of the same padded network size share a batch.

        An image is an RGB ``(H, W, 3)`` uint8 array, a ``(3, H, W)`` tensor (uint8, or float in [0, 1]),
        a PIL image (turned upright by its EXIF orientation, as files are; pass an array to use pixels as
        they are), or a path: a ``str`` or ``os.PathLike`` local path, a ``file://`` URI or any fsspec URL
        (``s3://``, ``https://`` ...; ``storage_options`` go to fsspec). Paths are read and decoded as the
        annotation job decodes them (:func:`~img2pose_core.imageio.decode_image`: EXIF orientation, the
        first frame of an animation, nothing declaring more than ``max_pixels`` pixels), one after the
        other and all before the first batch runs; their results carry ``image_uri`` and
        ``image_sha256``. Lists may mix paths and pixels.

        A path that cannot be read or decoded raises nothing: as for an image too elongated to run
        (``too_small``), its result has no faces, ``status`` is the job's status for it (``unreadable``,
        ``not_an_image``, ``corrupt``, ``unsupported``, ``too_large``) and ``skipped`` names the path and
        says why; one bad file never costs the others their faces. Check ``status`` before reading an
        empty result as "no face". Any other type raises ``TypeError``, a badly shaped array ``ValueError``.

        ``original_sizes`` (``(width, height)`` per image) says that an image is a reduced copy (e.g.
        decoded at JPEG draft scale) of a picture of that size: coordinates are then reported in the
        picture's pixels.
        """
        images = list(images)
        results: list[ImageFaces | None] = [None] * len(images)
        tensors: list[Tensor | None] = [None] * len(images)
        hashes: dict[int, str] = {}
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                try:
                    image, hashes[i] = _read_path(image, max_pixels, storage_options)
                except ImageDecodeError as exc:
                    results[i] = ImageFaces.empty(0, 0, (0, 0), exc.message, status=exc.status)
                    continue
            tensors[i] = _to_chw_float(image)
        report = [
            None if t is None
            else (int(t.shape[2]), int(t.shape[1])) if not original_sizes or original_sizes[i] is None
            else (int(original_sizes[i][0]), int(original_sizes[i][1]))
            for i, t in enumerate(tensors)
        ]  # fmt: skip
        size = batch_size or self.batch_size
        # Batch images of similar aspect ratio together so the padded batch wastes little.
        buckets: dict[tuple[int, int], list[int]] = {}
        lo, hi = self.settings["min_size"], self.settings["max_size"]
        for i, t in enumerate(tensors):
            if t is None:
                continue
            h, w = int(t.shape[1]), int(t.shape[2])
            net = resized_size(w, h, lo, hi)
            if min(net) < 1:
                reason = f"{w}x{h} image resizes to {net[0]}x{net[1]} px at min_size {lo} / max_size {hi}"
                results[i] = ImageFaces.empty(report[i][0], report[i][1], net, reason)
            else:
                buckets.setdefault(padded_size(*net), []).append(i)
        # Only images that pad to the same network input share a batch: each then sees exactly the
        # zero border it would see alone, so batching never changes a detection.
        chunks = [members[s : s + size] for members in buckets.values() for s in range(0, len(members), size)]
        upload = self._upload([tensors[i] for i in chunks[0]]) if chunks else None
        for n, chunk in enumerate(chunks):
            current = upload
            if n + 1 < len(chunks):
                # Queued before this chunk's compute: on a GPU the copy runs alongside it.
                upload = self._upload([tensors[i] for i in chunks[n + 1]])
            faces = self._predict_batch(current, [report[i] for i in chunk])
            for i, f in zip(chunk, faces):
                results[i] = f
        for i, result in enumerate(results):
            result.model_sha256 = self.model_sha256
            if isinstance(images[i], (str, os.PathLike)):
                result.image_uri, result.image_sha256 = _stored_uri(os.fsdecode(images[i])), hashes.get(i)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _upload(self, images: list[Tensor]) -> tuple[list[Tensor], Any]:
        """Images on the device. On CUDA: from pinned memory, non-blocking, on a copy stream, with
        the event that marks the end of the copies (the compute stream waits on it, not the host)."""
        if self.device.type != "cuda":
            return [img.to(self.device) for img in images], None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            on_device = [img if img.is_cuda else img.pin_memory().to(self.device, non_blocking=True) for img in images]
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return on_device, done

    @torch.inference_mode()
    def _predict_batch(self, upload: tuple[list[Tensor], Any], report_sizes: list[tuple[int, int]]) -> list[ImageFaces]:
        images, copied = upload
        if copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for img in images:
                img.record_stream(compute)  # allocated on the copy stream, used on this one
        batch = [img.float().div_(255.0) if img.dtype == torch.uint8 else img.float() for img in images]
        if self.precision == "fp32":
            detections = self.model(batch, threshold=self.threshold)
        else:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                detections = self.model(batch, threshold=self.threshold)
        return self._describe_faces(detections, report_sizes)

    def _describe_faces(self, detections, report_sizes: list[tuple[int, int]]) -> list[ImageFaces]:
        """Angles, landmarks and alignment for every face of the batch in one vectorised pass."""
        counts = [len(d.scores) for d in detections]
        dev = self.device
        poses = torch.cat([d.dofs for d in detections]).to(dev, torch.float64) if detections else torch.zeros(0, 6)
        net_wh = torch.tensor([[d.resized_hw[1], d.resized_hw[0]] for d in detections], dtype=torch.int64, device=dev)
        orig_wh = torch.tensor(report_sizes, dtype=torch.float64, device=dev).reshape(-1, 2)
        index = torch.repeat_interleave(torch.arange(len(detections), device=dev), torch.tensor(counts, device=dev))
        face_net_wh = net_wh[index]
        k = geometry.image_intrinsics(face_net_wh[:, 0], face_net_wh[:, 1])
        scale = (orig_wh / net_wh.to(torch.float64))[index][:, None, :]
        lms5 = geometry.project_points(self._points_5, poses, k) * scale
        lms68 = geometry.project_points(self._points_68, poses, k) * scale if self.landmarks_68 else None
        angles = geometry.rotvec_to_yaw_pitch_roll(poses[:, :3])
        matrices, _ = alignment.align_matrix(lms5, self.crop_size, self.align_mode)

        def split(t: Tensor | None):
            return [None] * len(counts) if t is None else [x.cpu().numpy() for x in torch.split(t, counts)]

        per = zip(detections, report_sizes, split(poses), split(angles), split(lms5), split(matrices), split(lms68))
        out = []
        for d, (rw, rh), pose, ang, l5, mat, l68 in per:
            boxes = d.boxes.float().cpu().numpy()
            if (rw, rh) != (d.original_hw[1], d.original_hw[0]):  # a reduced copy: back to the picture's pixels
                sx, sy = rw / d.original_hw[1], rh / d.original_hw[0]
                boxes = (boxes * np.array([sx, sy, sx, sy], dtype=np.float64)).astype(np.float32)
            out.append(
                ImageFaces(
                    width=rw,
                    height=rh,
                    network_size=(d.resized_hw[1], d.resized_hw[0]),
                    scores=d.scores.float().cpu().numpy(),
                    boxes=boxes,
                    poses=pose,
                    yaw_pitch_roll=ang,
                    landmarks_5=l5,
                    align_matrices=mat,
                    landmarks_68=l68,
                )
            )
        return out

"""The stages of the annotation pipeline, each a Ray Data UDF: load (read + decode), model, crops.

Rows between stages are one per image. The load stage emits every input image with a ``status``;
the model stage replaces pixels by the faces (an Arrow list of structs per image) so that only small
rows travel on; the optional crops stage cuts aligned crops on CPU from the original bytes.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from img2pose_core.bundle import BundleRef, open_ref
from img2pose_core.face_rows import FACE_FIELDS, FACE_STRUCT, face_lists
from img2pose_core.imageio import ImageDecodeError, decode_image
from img2pose_core.storage import StorageConfig
from img2pose_core.uris import join_uri, redact_text

from .loading import LoadSettings, load_images, object_column
from .progress import batch_counts, status_counts

__all__ = [
    "LoadSettings",
    "load_images",
    "ModelStage",
    "SourcesModelStage",
    "CropStage",
    "FACE_FIELDS",
    "FACE_STRUCT",
    "object_column",
]


class BundleFiles:
    """A Ray actor that holds a local bundle's files (:func:`img2pose_core.bundle.bundle_files`) for the
    run's model actors, created by the driver with ``num_cpus=0`` under the holder name of the run's
    :class:`~img2pose_core.bundle.BundleRef`. Model actors look it up by name rather than receiving a
    reference in their constructor arguments: Ray Data restarts its actors, and Ray warns on every run
    about restartable actors whose constructor arguments hold object references."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self._files = files

    def files(self) -> dict[str, bytes]:
        """The bundle's files by name, ``bundle.json`` among them."""
        return self._files


def held_bundle_files(holder: str) -> dict[str, bytes]:
    """The files that the run's :class:`BundleFiles` actor named ``holder`` keeps (``open_ref``'s ``fetch_files``)."""
    import ray

    return ray.get(named_actor(holder).files.remote())


def named_actor(name: str) -> Any:
    """The run's helper actor of that name (a bundle holder or the progress counter)."""
    import ray

    return ray.get_actor(name)


class ModelStage:
    """A model actor: loads the bundle once, then runs the batched predictor on every batch."""

    def __init__(
        self,
        bundle: BundleRef | str,
        holder: str | None = None,
        digest: str = "",
        predictor_kwargs: dict[str, Any] | None = None,
        torch_threads: int | None = None,
        storage_options: dict | None = None,
        shown_uri: str = "",
        keep_bytes: bool = True,
        progress: str | None = None,
    ) -> None:
        """Open the run's bundle, checked against the driver's digest, and load the predictor.

        ``bundle`` is the run's :class:`~img2pose_core.bundle.BundleRef`; a URI with its ``holder``
        and ``digest`` stands for ``BundleRef(bundle, digest, holder)``.
        """
        import torch

        from img2pose_core.predictor import Predictor

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.keep_bytes = keep_bytes  # the crops stage re-decodes the original bytes
        where = shown_uri or "the bundle"
        uri = bundle.uri if isinstance(bundle, BundleRef) else str(bundle)
        try:
            ref = bundle if isinstance(bundle, BundleRef) else BundleRef(uri, digest, holder)
            opened = open_ref(ref, fetch_files=held_bundle_files, storage_options=storage_options)
            self.predictor = Predictor(opened, **(predictor_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - say which bundle, not a cache path
            raise RuntimeError(f"model actor could not load --bundle {where}: {redact_text(str(exc), [uri])}") from None
        self.model_sha256 = self.predictor.model_sha256
        self.progress_name = progress
        self._progress: Any = None  # the run's ProgressCounter actor (a Ray actor handle), looked up by name

    def _report(self, table: pa.Table) -> None:
        """Add this batch to the run's progress counts; never fails the batch (progress is informative)."""
        if self.progress_name is None:
            return
        try:
            if self._progress is None:
                self._progress = named_actor(self.progress_name)
            faces = pc.sum(table["num_faces"]).as_py() or 0
            statuses = table["status"].to_pylist()
            self._progress.add.remote(batch_counts(statuses, faces), status_counts(statuses))
        except Exception:  # noqa: BLE001
            pass

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        statuses = [str(s) for s in batch["status"]]
        errors = [None if e is None else str(e) for e in batch["error"]]
        pixels = list(batch["pixels"])
        encoded = [i for i, e in enumerate(batch.get("encoded", [])) if e and statuses[i] == "ok"]
        if encoded:
            batch = dict(batch, width=np.array(batch["width"]), height=np.array(batch["height"]))
        for i, decoded in zip(encoded, self._decode([batch["data"][i] for i in encoded])):
            if isinstance(decoded, ImageDecodeError):
                # As if the load stage had failed to decode it: no size either.
                statuses[i], errors[i] = decoded.status, decoded.message
                batch["width"][i] = batch["height"][i] = -1
            else:
                pixels[i] = decoded
        ok = [i for i, s in enumerate(statuses) if s == "ok"]
        results: dict[int, Any] = {}
        if ok:
            images = [pixels[i] for i in ok]
            sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in ok]
            try:
                results = dict(zip(ok, self.predictor.predict(images, original_sizes=sizes)))
            except Exception:  # noqa: BLE001 - find the image that fails, keep the others
                for i, img, size in zip(ok, images, sizes):
                    try:
                        results[i] = self.predictor.predict([img], original_sizes=[size])[0]
                    except Exception as exc:  # noqa: BLE001
                        statuses[i], errors[i] = "inference_error", f"{type(exc).__name__}: {exc}"
        for i, faces in results.items():
            if faces.skipped:
                statuses[i], errors[i] = "too_small", faces.skipped
        table = self._table(batch, statuses, errors, results)
        self._report(table)
        return table

    def _decode(self, datas: list) -> list:
        """JPEG bytes decoded on the predictor's device, in one batched call (nvJPEG on a GPU), EXIF
        orientation applied: (3, H, W) uint8 tensors, or the :class:`ImageDecodeError` of each image
        that neither that decoder nor the CPU's (Pillow, as the load stage decodes) can read."""
        if not datas:
            return []
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        def on_device(items: list) -> list:
            tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in items]
            with warnings.catch_warnings():
                # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still are
                # the batched nvJPEG path that torch ships, and the device machine's 0.26 has no warning.
                warnings.simplefilter("ignore", DeprecationWarning)
                return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.predictor.device,
                                        apply_exif_orientation=True))  # fmt: skip

        try:
            return on_device(datas)
        except Exception:  # noqa: BLE001 - one bad image fails the batched call: find it
            out = []
            for data in datas:
                try:
                    out.append(on_device([data])[0])
                except Exception:  # noqa: BLE001 - what the device's decoder refuses, Pillow may read
                    try:
                        out.append(decode_image(data, max_pixels=1 << 62).pixels)
                    except ImageDecodeError as exc:
                        out.append(exc)
            return out

    def _table(self, batch, statuses: list[str], errors: list, results: dict) -> pa.Table:
        n = len(statuses)
        per_image = [results.get(i) if statuses[i] == "ok" else None for i in range(n)]
        counts, faces = face_lists(per_image)
        net_w = [f.network_size[0] if f is not None else None for f in per_image]
        net_h = [f.network_size[1] if f is not None else None for f in per_image]
        ok_mask = np.array([s == "ok" for s in statuses])
        return pa.table(
            {
                "image_uri": pa.array([str(u) for u in batch["image_uri"]], pa.string()),
                "image_sha256": pa.array([None if s is None else str(s) for s in batch["image_sha256"]], pa.string()),
                "width": pa.array(np.where(batch["width"] >= 0, batch["width"], 0), pa.int32(), mask=batch["width"] < 0),
                "height": pa.array(np.where(batch["height"] >= 0, batch["height"], 0), pa.int32(), mask=batch["height"] < 0),
                "network_width": pa.array(net_w, pa.int32()),
                "network_height": pa.array(net_h, pa.int32()),
                "num_faces": pa.array(counts, pa.int32(), mask=~ok_mask),
                "status": pa.array(statuses, pa.string()),
                "error": pa.array(errors, pa.string()),
                "faces": faces,
                "data": pa.array([d if isinstance(d, bytes) and self.keep_bytes else None for d in batch["data"]], pa.binary()),
                "kept": pa.array([None if k is None else str(k) for k in batch.get("kept", [None] * n)], pa.string()),
                "encoded": pa.array([bool(e) for e in batch.get("encoded", [False] * n)], pa.bool_()),
            }
        )  # fmt: skip


class SourcesModelStage(ModelStage):
    """A model actor that reads and decodes its own sources (CPU clusters, ``load_in == "actor"``).

    Each batch is a batch of sources (files, tar shards, status rows); they are loaded as the load stage
    loads them (:func:`load_images`, in chunks of one model batch) and predicted at once, so no pixels
    travel through the object store and no separate task competes for the CPUs.
    """

    def __init__(self, load: LoadSettings, **model_kwargs: Any) -> None:
        super().__init__(**model_kwargs)
        self.load = load

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for rows in load_images(batch, self.load):
            yield super().__call__(rows)


class CropStage:
    """Cuts each face's aligned crop from the original image and writes it as JPEG."""

    def __init__(self, output: str, storage: StorageConfig, crop_size: int, quality: int = 92) -> None:
        self.output, self.storage, self.size, self.quality = output, storage, crop_size, quality

    def __call__(self, table: pa.Table) -> pa.Table:
        from PIL import Image

        from img2pose_core.alignment import warp_crop

        faces_col = table.column("faces").combine_chunks()
        flat = faces_col.flatten()  # respects a sliced column's offsets
        offsets = faces_col.offsets.to_numpy()
        offsets = offsets - offsets[0]
        crop_uris: list[str | None] = [None] * len(flat)
        matrices = np.asarray(flat.field("align_matrix").flatten().to_numpy(zero_copy_only=False)).reshape(-1, 2, 3)
        for row in range(table.num_rows):
            start, stop = int(offsets[row]), int(offsets[row + 1])
            data = table.column("data")[row].as_py()
            if stop == start or data is None:
                continue
            sha = table.column("image_sha256")[row].as_py()
            try:
                image = Image.fromarray(decode_image(data, max_pixels=1 << 62).pixels)
            except ImageDecodeError:
                continue  # decoded fine moments ago; leave crop_uri null rather than fail the run
            for k in range(start, stop):
                crop = warp_crop(image, matrices[k], self.size)
                buf = io.BytesIO()
                crop.save(buf, format="JPEG", quality=self.quality)
                # Named by content hash and face index only: nothing of the input's name reaches a path.
                uri = join_uri(self.output, "crops", sha, f"{k - start}.jpg")
                self.storage.write_bytes(uri, buf.getvalue())
                crop_uris[k] = uri
        new_flat = pa.StructArray.from_arrays(
            [pa.array(crop_uris, pa.string()) if f.name == "crop_uri" else flat.field(f.name) for f in FACE_FIELDS],
            fields=FACE_FIELDS,
        )
        faces = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), new_flat, type=pa.list_(FACE_STRUCT))
        idx = table.schema.get_field_index("faces")
        return table.set_column(idx, "faces", faces).drop_columns(["data"])


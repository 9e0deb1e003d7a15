"""The stages of the annotation pipeline, each a Ray Data UDF: load (read + decode), model, crops.

Rows between stages are one per image. The load stage emits every input image with a ``status``;
the model stage replaces pixels by the faces (an Arrow list of structs per image) so that only small
rows travel on; the optional crops stage cuts aligned crops on CPU from the original bytes.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from img2pose_core.bundle import BundleRef, open_ref
from img2pose_core.imageio import ImageDecodeError, decode_image, probe_jpeg

from img2pose_core.uris import redact_text, redact_uri

from .done import done_member_names, is_done
from .inputs import classify_directory
from .progress import batch_counts, status_counts
from .reading import ReadLimits, read_concurrently, read_source
from img2pose_core.face_rows import FACE_FIELDS, FACE_STRUCT, face_lists
from .storage import StorageConfig, join_uri

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

_EMPTY = np.zeros((0, 0, 3), np.uint8)


def object_column(values: list) -> np.ndarray:
    """A 1-D object array holding ``values`` as they are (numpy would stack equal-shaped arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@dataclass(frozen=True)
class LoadSettings:
    storage: StorageConfig
    max_pixels: int
    keep_bytes: bool  # the crops stage re-decodes the original bytes
    rows_per_batch: int = 16
    reduce_for: tuple[int, int] | None = None  # (min_size, max_size): JPEG draft-scale decoding
    read_timeout_s: float = 180.0  # the whole read of one source, retries included
    device_decode: bool = False  # JPEGs travel as bytes and are decoded by the model stage (--gpu-decode)
    output_root: str | None = None  # local files resolving into the output are not read
    parallel_reads: int = 8

    @property
    def max_file_bytes(self) -> int:
        """Largest image file read: 8 bytes a pixel of --max-pixels (16-bit RGBA, uncompressed), at least 64 MiB."""
        return max(64 << 20, 8 * self.max_pixels)


def _row(uri: str, status: str, error: str | None = None, data: bytes | None = None, kept: str | None = None) -> dict:
    return {"image_uri": uri, "status": status, "error": error, "data": data, "kept": kept}


def _decode_rows(rows: list[dict], settings: LoadSettings) -> dict[str, np.ndarray]:
    uris, shas, widths, heights, statuses, errors, pixels, datas, kept, encoded = [], [], [], [], [], [], [], [], [], []
    for r in rows:
        kept.append(r.get("kept"))
        data = r.get("data")
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        px, status, error, size, bytes_only = _EMPTY, r["status"], r["error"], (-1, -1), False
        if status == "pending":
            try:
                probed = probe_jpeg(data, max_pixels=settings.max_pixels) if settings.device_decode else None
                if probed is not None:
                    # Checked from the header; the model stage decodes (the bytes travel, not the pixels).
                    status, size, bytes_only = "ok", probed, True
                else:
                    img = decode_image(data, max_pixels=settings.max_pixels, reduce_for=settings.reduce_for)
                    px, status, size = img.pixels, "ok", (img.width, img.height)
            except ImageDecodeError as exc:
                status, error = exc.status, exc.message
        encoded.append(bytes_only)
        uris.append(r["image_uri"])
        shas.append(sha)
        # The picture's full size, even when its pixels were decoded at a reduced scale.
        widths.append(size[0])
        heights.append(size[1])
        statuses.append(status)
        errors.append(error)
        pixels.append(px)
        datas.append(data if (status == "ok" and (settings.keep_bytes or bytes_only)) else None)
    return {
        "image_uri": np.array(uris, dtype=object),
        "image_sha256": np.array(shas, dtype=object),
        "width": np.array(widths, dtype=np.int32),
        "height": np.array(heights, dtype=np.int32),
        "status": np.array(statuses, dtype=object),
        "error": np.array(errors, dtype=object),
        "pixels": object_column(pixels),
        "data": object_column(datas),
        "kept": np.array(kept, dtype=object),
        "encoded": np.array(encoded, dtype=bool),
    }


def _member_limit(data: bytes, settings: LoadSettings) -> int:
    """Most bytes a tar member may declare before it is read.

    ``mode="r:*"`` also opens gzip/bz2/xz streams, where a shard of 2 MB can declare a member of
    gigabytes (a decompression bomb) that ``extractfile().read()`` would allocate whole. A member of
    an uncompressed shard is never larger than the shard, which is already in memory; beyond that,
    what an image file of --max-pixels may need (:attr:`LoadSettings.max_file_bytes`).
    """
    return max(len(data), settings.max_file_bytes)


def _tar_member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r} inside the shard: not followed"
    if member.islnk():
        return f"a hard link to {member.linkname!r} inside the shard: not followed"
    if member.ischr() or member.isblk():
        return "a device entry inside the shard: not read"
    if member.isfifo():
        return "a named pipe (FIFO) entry inside the shard: not read"
    return "not a regular file inside the shard: not read"


def _tar_members(shown: str, data: bytes, limit: int) -> Iterator[dict]:
    """Rows for every entry of a shard (folders aside): images to decode, and rows for the rest.

    A name that occurs twice is taken once, from its last entry (what extracting the shard leaves);
    the earlier entries are ``duplicate``. Sidecars (``x.json`` beside ``x.jpg``) and markers are
    counted, links, devices and pipes get a ``not_a_file`` row, and every other entry is offered to
    the decoder, whatever its extension.
    """
    members: list[tarfile.TarInfo] = []
    damage = None
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield _row(shown, "corrupt", f"tar shard is damaged: {type(exc).__name__}: {exc}")
        return
    with tar:
        try:
            for member in tar:
                members.append(member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            # A damaged shard: the entries before the damage are read; the shard itself gets a row.
            damage = f"tar shard is damaged: {type(exc).__name__}: {exc}"
        entries = [m for m in members if not m.isdir()]
        last = {m.name: i for i, m in enumerate(entries)}
        listing = classify_directory([(m.name, "file") for m in entries if m.isfile()])
        ignored = {r["source_uri"]: r["status"] for r in listing if r["kind"] == "row"}
        for i, member in enumerate(entries):
            uri = f"{shown}#{member.name}"
            if last[member.name] != i:
                yield _row(uri, "duplicate")
            elif not member.isfile():
                yield _row(uri, "not_a_file", _tar_member_kind(member))
            elif member.name in ignored:
                yield _row(uri, ignored[member.name])
            elif member.size > limit:
                yield _row(uri, "too_large", f"tar member declares {member.size} bytes, above the limit of {limit}")
            else:
                try:
                    f = tar.extractfile(member)
                    yield _row(uri, "pending", data=f.read() if f else b"")
                except (tarfile.TarError, EOFError, OSError) as exc:
                    yield _row(uri, "corrupt", f"tar member cannot be read: {type(exc).__name__}: {exc}")
    if damage:
        yield _row(shown, "corrupt", damage)


def load_images(batch: dict[str, np.ndarray], settings: LoadSettings) -> Iterator[dict]:
    """Read and decode a batch of sources; yields rows for every input, counted ones included.

    Sources are read several at a time (:func:`jobs.reading.read_concurrently`), each bounded by
    ``settings.read_timeout_s``, and decoded as they arrive. A source's ``done_members``
    (``--skip-existing``, :mod:`jobs.done`) says what already has an ``ok`` row: a done file is not read,
    and done members of a shard are not decoded; both pass on as ``skipped``. A source's ``kept`` (the
    manifest columns of ``--keep-columns``, as JSON) goes with its rows. URIs are stored with their
    secrets redacted.
    """
    pending: list[dict] = []

    def flush(final: bool = False) -> Iterator[dict]:
        nonlocal pending
        while len(pending) >= settings.rows_per_batch or (final and pending):
            chunk, pending = pending[: settings.rows_per_batch], pending[settings.rows_per_batch :]
            yield _decode_rows(chunk, settings)

    n = len(batch["source_uri"])
    column = lambda name, default: batch[name] if name in batch else [default] * n  # noqa: E731
    to_read: list[tuple[int, str, str]] = []
    shown: dict[int, str] = {}
    kept = [str(k) if k else None for k in column("kept", None)]
    done = list(column("done_members", None))
    for index, (uri, kind, status, error) in enumerate(zip(batch["source_uri"], batch["kind"], column("status", ""), column("error", ""))):
        uri, kind = str(uri), str(kind)
        shown[index] = redact_uri(uri)
        if kind == "row":
            pending.append(_row(shown[index], str(status), redact_text(str(error or ""), [uri]) or None, kept=kept[index]))
        elif kind == "file" and is_done(done[index]):
            pending.append(_row(shown[index], "skipped"))
        else:
            to_read.append((index, uri, kind))
    yield from flush()

    limits = ReadLimits(settings.read_timeout_s, settings.max_file_bytes, settings.output_root)
    shard_limits = ReadLimits(settings.read_timeout_s, None, settings.output_root)
    kinds = {index: kind for index, _, kind in to_read}

    def read(uri: str) -> bytes:
        return read_source(uri, settings.storage, shard_limits if uri.lower().endswith(".tar") else limits)

    for index, data, failure in read_concurrently(to_read, read, settings.read_timeout_s, settings.parallel_reads):
        if failure is not None:
            pending.append(_row(shown[index], failure.status, failure.message, kept=kept[index]))
        elif kinds[index] == "tar":
            skip = done_member_names(done[index])
            for row in _tar_members(shown[index], data, _member_limit(data, settings)):
                member = row["image_uri"][len(shown[index]) + 1 :]
                if row["status"] == "pending" and member in skip:
                    row = _row(row["image_uri"], "skipped")
                row["kept"] = kept[index]
                pending.append(row)
                yield from flush()
            del data
        else:
            pending.append(_row(shown[index], "pending", data=data, kept=kept[index]))
        yield from flush()
    yield from flush(final=True)


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
        self.progress_name, self._progress = progress, None  # the run's ProgressCounter actor, by name

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

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:  # type: ignore[override]
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


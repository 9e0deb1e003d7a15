"""Turn the authors' annotation format into Parquet training shards with pose labels and pose statistics.

    python -m jobs.prepare_dataset --train-list WIDER_train_annotations.txt --val-list WIDER_val_annotations.txt \
        --bundle BUNDLE --output s3://bucket/img2pose/wider/
    python -m jobs.prepare_dataset --format biwi --frame-list BIWI_annotations.txt --root BIWI/hpdb/ \
        --output biwi_gt.json

Input: a list file (local or any fsspec URL) naming one JSON per line (paths relative to the list file);
each JSON holds ``image_path`` (relative to the JSON), ``bboxes`` (x1 y1 x2 y2 per face) and ``landmarks``
(5 or 68 points per face; a face with -1 in its landmarks has no pose), and for ``--format 300wlp`` the
``pose_para`` of each face. Labels are the original's (:mod:`img2pose_core.labels`, reproduced on the
golden ``labels.npz`` / ``labels_300wlp.npz``): integer boxes, faces with a degenerate box dropped, the
box-frame pose by OpenCV's EPnP of the landmarks with the box intrinsics (300W-LP: rotation from
``pose_para``, translation by EPnP with the image intrinsics), the image-frame pose, and the training
box: the 68 reference points projected with that pose.

``--format biwi`` converts BIWI's own files for ``jobs/evaluate.py``: a frame list (one
``frame_NNNNN_rgb.png`` path per line, relative to ``--root``, optionally followed by angles) and each
frame's ``frame_NNNNN_pose.txt`` become one JSON file (image path and rotation matrix per frame).

Output under ``--output``: ``train/part-NNNNN.parquet`` (and ``val/``) with one row per image that has a
face with a pose (``image`` bytes, ``image_id``, ``width``, ``height``, per kept face ``boxes``,
``ann_boxes``, ``landmarks``, ``local_pose``, ``global_pose``, ``has_pose``), ``pose_mean.npy`` /
``pose_stddev.npy`` (float64) over the training set's box-frame poses (give them to ``img2pose bundle
create``), and ``stats.json`` with counts.
"""

from __future__ import annotations

import argparse
import io
import json
import posixpath
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np  # imported where used: --help must not wait for numpy

from img2pose_core.cli.parser import CommandParser
from img2pose_core.flags import RawDescriptionHelpFormatter
from img2pose_core.storage import StorageConfig

__all__ = ["build_parser", "main", "read_annotation_list", "label_image", "prepare_split", "convert_biwi", "parse_args"]


def build_parser(prog: str = "prepare_dataset.py") -> argparse.ArgumentParser:
    """The script's flags."""
    p = CommandParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("--train-list", default=None, help="list file of per-image annotation JSONs (training split; required "
                   "for wider and 300wlp)")
    p.add_argument("--val-list", default=None, help="list file of the validation split")
    p.add_argument("--output", required=True, help="folder or fsspec URL for train/, val/, pose_mean.npy, pose_stddev.npy")
    p.add_argument("--bundle", default=None, help="take the 3D reference points from this bundle")
    p.add_argument("--points-68", default=None, help="reference_3d_68_points_trans.npy (instead of --bundle)")
    p.add_argument("--points-5", default=None, help="reference_3d_5_points_trans.npy (instead of --bundle)")
    p.add_argument("--format", choices=["wider", "300wlp", "biwi"], default="wider",
                   help="wider: poses fitted to the landmarks (training); 300wlp: rotation from each JSON's pose_para, "
                   "translation fitted (fine-tuning); biwi: the BIWI test frames for jobs/evaluate.py")
    p.add_argument("--frame-list", default=None, help="biwi: the frame list (e.g. the authors' BIWI_annotations.txt)")
    p.add_argument("--root", default=None, help="biwi: the folder the frame list's paths are relative to "
                   "(default: the list's folder)")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="images per Parquet file")
    p.add_argument("--limit", type=int, default=None, help="first N images of each list only")
    return p


def _join(base: str, rel: str) -> str:
    if "://" in rel or rel.startswith("/"):
        return rel
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.normpath(posixpath.join(rest, rel))
    return str((Path(base) / rel).resolve())


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def _storage() -> StorageConfig:
    """The stores as the other jobs reach them: ``$AWS_ENDPOINT_URL`` for S3, transient errors retried."""
    return StorageConfig.from_args(None)


def read_annotation_list(list_uri: str, limit: int | None = None):
    """Yield ``(json_uri, record, image_uri)`` for each line of a list file."""
    storage = _storage()
    text = storage.read_bytes(list_uri).decode("utf-8")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in lines[:limit]:
        json_uri = _join(_dirname(list_uri), line)
        record = json.loads(storage.read_bytes(json_uri))
        yield json_uri, record, _join(_dirname(json_uri), record["image_path"])


def _face_landmarks(record: dict, n: int) -> list[np.ndarray]:
    """Each face's landmarks as ``(K, 2)`` float64 (5 or 68 points; the count may differ between faces)."""
    import numpy as np

    lms = record.get("landmarks") or []
    if len(lms) != n:
        raise ValueError(f"{n} boxes but {len(lms)} landmark lists")
    return [np.asarray(face, dtype=np.float64).reshape(-1, np.shape(face)[-1] if np.ndim(face) == 2 else 2)[:, :2]
            for face in lms]  # fmt: skip


def label_image(record: dict, width: int, height: int, points_68: np.ndarray, points_5: np.ndarray,
                kind: str = "wider") -> dict:
    """Labels of one annotation record's kept faces, as the original's label creation makes them
    (:mod:`img2pose_core.labels`): ``boxes`` (training boxes: the 68 reference points projected with the
    pose, or the integer box of a face without pose), ``ann_boxes`` (integer boxes), ``landmarks`` (each
    face's points, flattened), ``local_pose`` / ``global_pose`` (-9 for a face without pose), ``has_pose``.
    ``kind`` ``"300wlp"``: rotation from the record's ``pose_para`` (one row per face), as fine-tuning."""
    import numpy as np

    from img2pose_core import labels as L

    boxes = np.asarray([b[:4] for b in record.get("bboxes") or []], dtype=np.float64).reshape(-1, 4)
    lms = _face_landmarks(record, len(boxes))
    fl: L.FaceLabels
    if kind == "300wlp":
        para = np.asarray(record["pose_para"], dtype=np.float64).reshape(len(boxes), -1)
        fl = L.face_labels_300wlp(boxes, lms, para, width, height, points_68)
    else:
        fl = L.face_labels(boxes, lms, width, height, points_68, points_5)
    keep = np.nonzero(fl.kept)[0]
    train_boxes = fl.boxes.astype(np.float64)
    if fl.has_pose.any():  # the original's loader recomputes the target box from the pose, for both kinds
        train_boxes[fl.has_pose] = L.projected_boxes(fl.pose_global[fl.has_pose], points_68, width, height)
    return {
        "boxes": train_boxes[keep], "ann_boxes": fl.boxes[keep], "landmarks": [lms[i].reshape(-1) for i in keep],
        "local_pose": fl.pose_local[keep], "global_pose": fl.pose_global[keep], "has_pose": fl.has_pose[keep],
    }


def _write_shard(rows: list[dict], uri: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    _storage().write_bytes(uri, buf.getvalue())


def prepare_split(list_uri: str, out_uri: str, points_68: np.ndarray, points_5: np.ndarray, rows_per_shard: int = 1000,
                  limit: int | None = None, kind: str = "wider") -> dict:
    """Label and write one split; returns its counts and the local poses of its posed faces."""
    import numpy as np
    from PIL import Image

    storage = _storage()
    rows, shard, counts = [], 0, {"images": 0, "written": 0, "skipped_no_pose": 0, "faces": 0, "posed_faces": 0,
                                  "dropped_degenerate_boxes": 0}  # fmt: skip
    poses = []
    for json_uri, record, image_uri in read_annotation_list(list_uri, limit):
        counts["images"] += 1
        data = storage.read_bytes(image_uri)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        labels = label_image(record, width, height, points_68, points_5, kind)
        counts["dropped_degenerate_boxes"] += len(record.get("bboxes") or []) - len(labels["has_pose"])
        if not labels["has_pose"].any():  # the original writes no record for it either
            counts["skipped_no_pose"] += 1
            continue
        counts["written"] += 1
        counts["faces"] += len(labels["boxes"])
        counts["posed_faces"] += int(labels["has_pose"].sum())
        poses.append(labels["local_pose"][labels["has_pose"]])
        rows.append({
            "image_id": image_uri, "image": data, "width": width, "height": height,
            **{k: (v.tolist() if isinstance(v, np.ndarray) else [x.tolist() for x in v]) for k, v in labels.items()},
        })
        if len(rows) >= rows_per_shard:
            _write_shard(rows, f"{out_uri.rstrip('/')}/part-{shard:05d}.parquet")
            rows, shard = [], shard + 1
    if rows:
        _write_shard(rows, f"{out_uri.rstrip('/')}/part-{shard:05d}.parquet")
        shard += 1
    counts["shards"] = shard
    return {"counts": counts, "poses": np.concatenate(poses) if poses else np.zeros((0, 6))}


def _reference_points(args) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    if args.bundle:
        from img2pose_core.bundle import open_bundle

        b = open_bundle(args.bundle)
        return b.points_68.astype(np.float64), b.points_5.astype(np.float64)
    if not (args.points_68 and args.points_5):
        raise SystemExit("prepare_dataset.py: give --bundle, or both --points-68 and --points-5")
    return np.load(args.points_68).astype(np.float64), np.load(args.points_5).astype(np.float64)


def _save_npy(arr: np.ndarray, uri: str) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr)
    _storage().write_bytes(uri, buf.getvalue())


def convert_biwi(frame_list: str, root: str | None, output: str) -> dict:
    """Write the evaluator's BIWI JSON from the dataset's frame list and ``_pose.txt`` files."""
    from img2pose_core.evaluation import biwi_frames, write_biwi_json

    records = biwi_frames(frame_list, root)
    missing = [r["image"] for r in records if not Path(r["image"]).is_file()]
    if missing:
        raise SystemExit(f"prepare_dataset.py: {len(missing)} listed frame(s) not found, e.g. {missing[0]}; "
                         "give --root the folder the list's paths are relative to")
    path = write_biwi_json(records, output)
    return {"frames": len(records), "output": str(path)}


def parse_args(
    argv: list[str] | None = None, prog: str = "prepare_dataset.py"
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the arguments, with the checks that depend on ``--format`` (exit 2 with a message)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.format == "biwi" and not args.frame_list:
        parser.error("--format biwi needs --frame-list (the BIWI frame list)")
    if args.format != "biwi" and not args.train_list:
        parser.error(f"--format {args.format} needs --train-list")
    return parser, args


def main(argv: list[str] | None = None, prog: str = "prepare_dataset.py") -> int:
    parser, args = parse_args(argv, prog)
    if args.format == "biwi":
        try:
            stats = convert_biwi(args.frame_list, args.root, args.output)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        print(json.dumps(stats, indent=2))
        return 0
    p68, p5 = _reference_points(args)
    out = args.output.rstrip("/")
    stats = {}
    train = prepare_split(args.train_list, f"{out}/train", p68, p5, args.rows_per_shard, args.limit, args.format)
    stats["train"] = train["counts"]
    if len(train["poses"]) == 0:
        raise SystemExit(f"{prog}: no face with a pose in the training list")
    from img2pose_core.labels import pose_statistics

    mean, std = pose_statistics(train["poses"])  # float64, population std, box-frame poses: as the original
    _save_npy(mean, f"{out}/pose_mean.npy")
    _save_npy(std, f"{out}/pose_stddev.npy")
    if args.val_list:
        stats["val"] = prepare_split(args.val_list, f"{out}/val", p68, p5, args.rows_per_shard, args.limit,
                                     args.format)["counts"]  # fmt: skip
    stats["pose_mean"], stats["pose_stddev"] = mean.tolist(), std.tolist()
    _storage().write_bytes(f"{out}/stats.json", json.dumps(stats, indent=2).encode("utf-8"))
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn the authors' annotation format into Parquet training shards with pose labels and pose statistics.

    python jobs/prepare_dataset.py --train-list WIDER_train_annotations.txt --val-list WIDER_val_annotations.txt \
        --bundle BUNDLE --output s3://bucket/img2pose/wider/

Input: a list file (local or any fsspec URL) naming one JSON per line (paths relative to the list file);
each JSON holds ``image_path`` (relative to the JSON), ``bboxes`` (x1 y1 x2 y2 per face) and ``landmarks``
(5 or 68 points per face; all ``-1`` for a face without a pose). Per face the job computes the authors'
labels: the *local* pose by PnP of the landmarks against the 3D reference points with the box intrinsics
(focal ``bw + bh``, centre ``(bw // 2, bh // 2)``), the *global* pose (``geometry.pose_box_to_image``), and
the training box: img2pose's box of the 68 reference points projected with the global pose.

Output under ``--output``: ``train/part-NNNNN.parquet`` (and ``val/``) with one row per image (``image``
bytes, ``image_id``, ``width``, ``height``, per face ``boxes``, ``ann_boxes``, ``landmarks``, ``local_pose``,
``global_pose``, ``has_pose``), ``pose_mean.npy`` / ``pose_stddev.npy`` over the training set's local poses
(give them to ``img2pose bundle create``), and ``stats.json`` with counts (images skipped because no face has
a pose, faces, PnP error).
"""

from __future__ import annotations

import argparse
import io
import json
import posixpath
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

__all__ = ["build_parser", "main", "read_annotation_list", "label_image", "prepare_split"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_dataset.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-list", required=True, help="list file of per-image annotation JSONs (training split)")
    p.add_argument("--val-list", default=None, help="list file of the validation split")
    p.add_argument("--output", required=True, help="folder or fsspec URL for train/, val/, pose_mean.npy, pose_stddev.npy")
    p.add_argument("--bundle", default=None, help="take the 3D reference points from this bundle")
    p.add_argument("--points-68", default=None, help="reference_3d_68_points_trans.npy (instead of --bundle)")
    p.add_argument("--points-5", default=None, help="reference_3d_5_points_trans.npy (instead of --bundle)")
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


def read_annotation_list(list_uri: str, limit: int | None = None):
    """Yield ``(json_uri, record, image_uri)`` for each line of a list file."""
    import fsspec

    with fsspec.open(list_uri, "rt") as f:
        lines = [l.strip() for l in f if l.strip()]
    for line in lines[:limit]:
        json_uri = _join(_dirname(list_uri), line)
        with fsspec.open(json_uri, "rt") as f:
            record = json.load(f)
        yield json_uri, record, _join(_dirname(json_uri), record["image_path"])


def label_image(record: dict, width: int, height: int, points_68: np.ndarray, points_5: np.ndarray) -> dict:
    """Per-face labels of one annotation record (see the module docstring)."""
    import torch

    from img2pose_core import geometry
    from img2pose_core.training import local_pose_from_landmarks

    boxes = np.asarray(record["bboxes"], dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    lms = np.asarray(record["landmarks"], dtype=np.float64).reshape(n, -1, 2) if n else np.zeros((0, 5, 2))
    has_pose = ~(lms == -1).all(axis=(1, 2)) if n else np.zeros(0, dtype=bool)
    local = np.zeros((n, 6))
    global_ = np.zeros((n, 6))
    train_boxes = boxes.copy()
    rms = np.zeros(n)
    idx = np.nonzero(has_pose)[0]
    if len(idx):
        refs = points_5 if lms.shape[1] == 5 else points_68
        local[idx], rms[idx] = local_pose_from_landmarks(lms[idx], boxes[idx], refs)
        wh = torch.tensor([width, height]).expand(len(idx), 2)
        g = geometry.pose_box_to_image(torch.from_numpy(local[idx]), torch.from_numpy(boxes[idx]), wh)
        global_[idx] = g.numpy()
        k = geometry.image_intrinsics(wh[:, 0], wh[:, 1])
        lms68 = geometry.project_points(torch.from_numpy(points_68).double(), g, k)
        train_boxes[idx] = geometry.face_box_from_landmarks(lms68, g[:, 2], wh).numpy()
    return {
        "boxes": train_boxes, "ann_boxes": boxes, "landmarks": lms.reshape(n, -1), "local_pose": local,
        "global_pose": global_, "has_pose": has_pose, "pnp_rms": rms,
    }


def _open_write(uri: str, mode: str = "wb"):
    """``uri`` opened for writing, its parent folder created (local) first."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    return fs.open(path, mode)


def _write_shard(rows: list[dict], uri: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    with _open_write(uri) as f:
        pq.write_table(table, f)


def prepare_split(list_uri: str, out_uri: str, points_68: np.ndarray, points_5: np.ndarray, rows_per_shard: int = 1000,
                  limit: int | None = None) -> dict:
    """Label and write one split; returns its counts and the local poses of its posed faces."""
    import fsspec
    from PIL import Image

    rows, shard, counts = [], 0, {"images": 0, "written": 0, "skipped_no_pose": 0, "faces": 0, "posed_faces": 0}
    poses, rms_all = [], []
    for json_uri, record, image_uri in read_annotation_list(list_uri, limit):
        counts["images"] += 1
        with fsspec.open(image_uri, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        labels = label_image(record, width, height, points_68, points_5)
        if not labels["has_pose"].any():
            counts["skipped_no_pose"] += 1
            continue
        counts["written"] += 1
        counts["faces"] += len(labels["boxes"])
        counts["posed_faces"] += int(labels["has_pose"].sum())
        poses.append(labels["local_pose"][labels["has_pose"]])
        rms_all.append(labels["pnp_rms"][labels["has_pose"]])
        rows.append({
            "image_id": image_uri, "image": data, "width": width, "height": height,
            **{k: v.tolist() for k, v in labels.items() if k != "pnp_rms"},
        })
        if len(rows) >= rows_per_shard:
            _write_shard(rows, f"{out_uri.rstrip('/')}/part-{shard:05d}.parquet")
            rows, shard = [], shard + 1
    if rows:
        _write_shard(rows, f"{out_uri.rstrip('/')}/part-{shard:05d}.parquet")
        shard += 1
    counts["shards"] = shard
    rms = np.concatenate(rms_all) if rms_all else np.zeros(0)
    counts["pnp_rms_px_mean"] = float(rms.mean()) if len(rms) else None
    return {"counts": counts, "poses": np.concatenate(poses) if poses else np.zeros((0, 6))}


def _reference_points(args) -> tuple[np.ndarray, np.ndarray]:
    if args.bundle:
        from img2pose_core.bundle import open_bundle

        b = open_bundle(args.bundle)
        return b.points_68.astype(np.float64), b.points_5.astype(np.float64)
    if not (args.points_68 and args.points_5):
        raise SystemExit("prepare_dataset.py: give --bundle, or both --points-68 and --points-5")
    return np.load(args.points_68).astype(np.float64), np.load(args.points_5).astype(np.float64)


def _save_npy(arr: np.ndarray, uri: str) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    with _open_write(uri) as f:
        f.write(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    p68, p5 = _reference_points(args)
    out = args.output.rstrip("/")
    stats = {}
    train = prepare_split(args.train_list, f"{out}/train", p68, p5, args.rows_per_shard, args.limit)
    stats["train"] = train["counts"]
    if len(train["poses"]) == 0:
        raise SystemExit("prepare_dataset.py: no face with a pose in the training list")
    mean = train["poses"].mean(0).astype(np.float32)
    std = train["poses"].std(0).astype(np.float32)
    _save_npy(mean, f"{out}/pose_mean.npy")
    _save_npy(std, f"{out}/pose_stddev.npy")
    if args.val_list:
        stats["val"] = prepare_split(args.val_list, f"{out}/val", p68, p5, args.rows_per_shard, args.limit)["counts"]
    stats["pose_mean"], stats["pose_stddev"] = mean.tolist(), std.tolist()
    with _open_write(f"{out}/stats.json", "w") as f:
        json.dump(stats, f, indent=2)
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

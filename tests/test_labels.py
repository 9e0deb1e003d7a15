"""Training labels against the original's (golden labels.npz and labels_300wlp.npz), through the project's
own path: annotation JSONs and images on disk -> ``jobs/prepare_dataset.py`` -> Parquet shards and pose
statistics -> the training loader's targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import needs_golden
from img2pose_core import labels as L

pytestmark = needs_golden


def _write_dataset(folder: Path, sizes: np.ndarray, records: list[dict]) -> Path:
    """Blank PNGs of the golden sizes (only the size matters), one JSON each, and the list file."""
    folder.mkdir(parents=True)
    names = []
    for i, ((w, h), record) in enumerate(zip(sizes, records)):
        Image.new("L", (int(w), int(h))).save(folder / f"{i:03d}.png", optimize=False, compress_level=1)
        (folder / f"{i:03d}.json").write_text(json.dumps({"image_path": f"{i:03d}.png", **record}))
        names.append(f"{i:03d}.json")
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    return folder / "list.txt"


def _rows(out: Path) -> dict[int, dict]:
    table = pq.read_table(sorted((out / "train").glob("*.parquet")))
    return {int(Path(r["image_id"]).stem): r for r in table.to_pylist()}


def _points(golden_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(golden_dir / "reference_3d_68_points_trans.npy"),
            np.load(golden_dir / "reference_3d_5_points_trans.npy"))  # fmt: skip


def test_wider_labels_are_the_originals(golden_dir, tmp_path):
    from jobs import prepare_dataset
    from jobs.train import _rows_to_batch

    z = np.load(golden_dir / "labels.npz")
    off = z["face_offsets"]
    records = [
        {"bboxes": z["bbox_json"][off[i]:off[i + 1]].tolist(),
         "landmarks": [z["lms_json"][j][: z["n_lms"][j]].tolist() for j in range(off[i], off[i + 1])]}
        for i in range(len(z["image_wh"]))
    ]  # fmt: skip
    listing = _write_dataset(tmp_path / "data", z["image_wh"], records)
    out = tmp_path / "prepared"
    assert prepare_dataset.main(["--train-list", str(listing), "--output", str(out),
                                 "--points-68", str(golden_dir / "reference_3d_68_points_trans.npy"),
                                 "--points-5", str(golden_dir / "reference_3d_5_points_trans.npy")]) == 0  # fmt: skip
    rows = _rows(out)
    assert set(rows) == set(np.nonzero(z["lmdb_included"])[0])  # images with no posed face are not written
    for i, row in rows.items():
        faces = np.arange(off[i], off[i + 1])
        kept = faces[z["kept"][faces]]
        assert row["ann_boxes"] == z["bbox_label"][kept].tolist(), i
        assert row["has_pose"] == z["has_pose"][kept].tolist(), i
        local, glob = np.array(row["local_pose"]), np.array(row["global_pose"])
        posed = np.array(row["has_pose"])
        # Bit-identical EPnP inputs: the 1e-9 of the golden README, for 5-point faces too.
        np.testing.assert_allclose(local, z["pose_local"][kept], atol=1e-9, rtol=0)
        np.testing.assert_allclose(glob, z["pose_global"][kept], atol=1e-9, rtol=0)
        assert (local[~posed] == L.NO_POSE).all()
        # The training loader's targets: only faces with a pose, their boxes blacked out otherwise.
        images, targets = _rows_to_batch([row], flip=False, rng=None)
        t = targets[0]
        assert len(t["boxes"]) == z["n_target_labels"][i]
        np.testing.assert_allclose(t["dofs"].numpy(), z["target_dofs"][kept][posed], atol=1e-6, rtol=0)
        np.testing.assert_allclose(t["boxes"].numpy(), z["target_boxes"][kept][posed], atol=1.0, rtol=0)
    assert np.array_equal(np.load(out / "pose_mean.npy"), np.load(out / "pose_mean.npy").astype(np.float64))
    np.testing.assert_allclose(np.load(out / "pose_mean.npy"), z["pose_mean"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.load(out / "pose_stddev.npy"), z["pose_stddev"], atol=1e-9, rtol=0)
    stats = json.loads((out / "stats.json").read_text())["train"]
    assert stats["dropped_degenerate_boxes"] == int((~z["kept"]).sum())


def test_faces_without_pose_are_blacked_out_and_not_targets(golden_dir):
    from jobs import prepare_dataset
    from jobs.train import _rows_to_batch

    p68, p5 = _points(golden_dir)
    z = np.load(golden_dir / "labels.npz")
    row_face = int(np.nonzero(z["has_pose"])[0][0])
    good = {"bboxes": [z["bbox_json"][row_face].tolist()], "landmarks": [z["lms_json"][row_face][: z["n_lms"][row_face]].tolist()]}
    record = {"bboxes": good["bboxes"] + [[10.7, 20.2, 60.9, 80.0], [-5.5, -3.7, 30.0, 40.0], [5, 5, 5, 9]],
              "landmarks": good["landmarks"] + [[[-1, -1]] * 5, [[12, 13]] * 4 + [[-1, 30]], [[6, 6]] * 5]}  # fmt: skip
    w, h = (int(v) for v in z["image_wh"][np.searchsorted(z["face_offsets"], row_face, side="right") - 1])
    labels = prepare_dataset.label_image(record, w, h, p68, p5)
    assert labels["has_pose"].tolist() == [True, False, False]  # the zero-width box is dropped
    assert labels["ann_boxes"].tolist()[1:] == [[10, 20, 60, 80], [-5, -3, 30, 40]]
    buf = __import__("io").BytesIO()
    Image.new("RGB", (w, h), (255, 255, 255)).save(buf, format="PNG")
    row = {"image": buf.getvalue(), **{k: (v.tolist() if isinstance(v, np.ndarray) else [x.tolist() for x in v])
                                        for k, v in labels.items()}}  # fmt: skip
    images, targets = _rows_to_batch([row], flip=False, rng=None)
    img = images[0]
    assert float(img[:, 20:80, 10:60].max()) == 0.0 and float(img[:, 0:40, 0:30].max()) == 0.0
    # Nothing else: the two boxes' union (50x60 + 30x40 - their 20x20 overlap) is all that is black.
    assert int((img == 0).all(0).sum()) == 3000 + 1200 - 400
    assert len(targets[0]["boxes"]) == 1 and targets[0]["has_pose"].all()


def test_300wlp_labels_are_the_originals(golden_dir, tmp_path):
    from jobs import prepare_dataset

    z = np.load(golden_dir / "labels_300wlp.npz")
    records = [{"bboxes": [z["bbox_json"][i].tolist()], "landmarks": [z["lms_json"][i].tolist()],
                "pose_para": [z["pose_para"][i].tolist()]} for i in range(len(z["image_wh"]))]  # fmt: skip
    listing = _write_dataset(tmp_path / "data", z["image_wh"], records)
    out = tmp_path / "prepared"
    assert prepare_dataset.main(["--train-list", str(listing), "--output", str(out), "--format", "300wlp",
                                 "--points-68", str(golden_dir / "reference_3d_68_points_trans.npy"),
                                 "--points-5", str(golden_dir / "reference_3d_5_points_trans.npy")]) == 0  # fmt: skip
    rows = _rows(out)
    assert set(rows) == set(np.nonzero(z["kept"])[0])
    for i, row in rows.items():
        assert row["ann_boxes"] == [z["bbox_label"][i].tolist()], i
        np.testing.assert_allclose(row["global_pose"][0], z["pose_global"][i], atol=1e-9, rtol=0)
        np.testing.assert_allclose(row["local_pose"][0], z["pose_local"][i], atol=1e-9, rtol=0)
    np.testing.assert_allclose(L.rotvec_from_300wlp(z["pose_para"]), z["rotvec"], atol=1e-9, rtol=0)


def test_300wlp_images_with_two_faces_get_a_pose_each(golden_dir):
    """Where the original overwrites the per-image pose_para with the first face's, each face keeps its own."""
    p68, _ = _points(golden_dir)
    z = np.load(golden_dir / "labels_300wlp.npz")
    i, j = 0, 1
    w = int(max(z["image_wh"][i][0], z["image_wh"][j][0]))
    h = int(max(z["image_wh"][i][1], z["image_wh"][j][1]))
    fl = L.face_labels_300wlp(np.stack([z["bbox_json"][i], z["bbox_json"][j]]), [z["lms_json"][i], z["lms_json"][j]],
                              np.stack([z["pose_para"][i], z["pose_para"][j]]), w, h, p68)  # fmt: skip
    assert fl.has_pose.all()
    np.testing.assert_allclose(fl.pose_global[:, :3], z["rotvec"][[i, j]], atol=1e-9, rtol=0)


def test_inference_does_not_import_opencv():
    import subprocess
    import sys

    code = "import sys, img2pose_core.predictor, img2pose_core.bundle; sys.exit('cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

"""The rebuilt model and geometry against the outputs of the authors' implementation (../shared/golden).

Tolerances are the golden README's: detections (same count and order) with scores within 1e-4, boxes
within 1 px, poses within 1e-3; geometry poses within 1e-6, landmarks 1e-4 px, boxes 1 px, transforms
1e-6, angles 1e-6 degrees.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks._common import undo_tie_swaps
from PIL import Image

from img2pose_core import alignment, geometry

from conftest import needs_golden

pytestmark = [needs_golden, pytest.mark.golden]


@pytest.fixture(scope="module")
def geo(golden_dir):
    with np.load(golden_dir / "geometry.npz") as g:
        data = {k: g[k] for k in g.files}
    data["p68"] = np.load(golden_dir / "reference_3d_68_points_trans.npy")
    data["p5"] = np.load(golden_dir / "reference_3d_5_points_trans.npy")
    return data


@pytest.fixture(scope="module")
def runs(golden_dir):
    runs = json.loads((golden_dir / "runs.json").read_text())
    with np.load(golden_dir / "detections.npz") as d:
        expected = {k: d[k] for k in d.files}
    return runs, expected


def _t(a):
    return torch.as_tensor(a)


def test_pose_box_to_image_and_back(geo):
    wh, boxes = _t(geo["image_wh"]), _t(geo["bbox"])
    glob = geometry.pose_box_to_image(_t(geo["local_pose"]), boxes, wh).numpy()
    np.testing.assert_allclose(glob, geo["global_pose"], rtol=0, atol=1e-6)
    back = geometry.pose_image_to_box(_t(geo["global_pose"]), boxes, wh).numpy()
    np.testing.assert_allclose(back, geo["local_pose_back"], rtol=0, atol=1e-6)


def test_projection_box_and_angles(geo):
    wh, pose = _t(geo["image_wh"]), _t(geo["global_pose"])
    k = geometry.image_intrinsics(wh[:, 0], wh[:, 1])
    lms68 = geometry.project_points(_t(geo["p68"]), pose, k)
    np.testing.assert_allclose(lms68.numpy(), geo["lms68"], rtol=0, atol=1e-4)
    lms5 = geometry.project_points(_t(geo["p5"]), pose, k)
    np.testing.assert_allclose(lms5.numpy(), geo["lms5"], rtol=0, atol=1e-4)
    box = geometry.face_box_from_landmarks(lms68, pose[:, 2], wh).numpy()
    np.testing.assert_allclose(box, geo["proj_bbox"], rtol=0, atol=1)
    ypr = geometry.rotvec_to_yaw_pitch_roll(pose[:, :3]).numpy()
    np.testing.assert_allclose(ypr[:, [1, 0, 2]], geo["pitch_yaw_roll"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [112, 224])
def test_alignment_to_pose_templates(geo, size):
    matrices, _ = alignment.align_matrix(_t(geo["lms5"]), size)
    np.testing.assert_allclose(matrices.numpy(), geo[f"align_M{size}"], rtol=0, atol=1e-6)


def _assert_detections(name, scores, boxes, dofs, expected):
    exp_scores, exp_boxes, exp_dofs = (expected[f"{name}/{k}"] for k in ("scores", "boxes", "dofs"))
    assert len(scores) == len(exp_scores), f"{name}: {len(scores)} detections, golden has {len(exp_scores)}"
    order = undo_tie_swaps(exp_scores, exp_boxes, np.asarray(boxes))
    scores, boxes, dofs = np.asarray(scores)[order], np.asarray(boxes)[order], np.asarray(dofs)[order]
    np.testing.assert_allclose(scores, exp_scores, rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(boxes, exp_boxes, rtol=0, atol=1.0, err_msg=name)
    np.testing.assert_allclose(dofs, exp_dofs, rtol=0, atol=1e-3, err_msg=name)


def test_predictor_reproduces_every_golden_run(golden_dir, golden_bundle, runs):
    from img2pose_core.predictor import Predictor

    run_list, expected = runs
    for run in run_list:
        predictor = Predictor(
            str(golden_bundle),
            device="cpu",
            min_size=run["min_size"],
            max_size=run["max_size"],
            threshold=0.0,
            rpn_pre_nms_top_n=6000,
            rpn_post_nms_top_n=1000,
        )
        image = Image.open(golden_dir / "images" / run["image"])
        faces = predictor.predict([image])[0]
        _assert_detections(run["name"], faces.scores, faces.boxes, faces.poses, expected)


def test_img2pose_predict_command_reproduces_golden_runs(golden_dir, golden_bundle, runs):
    run_list, expected = runs
    for run in run_list:
        cmd = [
            sys.executable, "-m", "img2pose_core.cli", "predict", "--bundle", str(golden_bundle),
            "--device", "cpu", "--min-size", str(run["min_size"]), "--max-size", str(run["max_size"]),
            "--rpn-pre-nms-top-n", "6000", "--rpn-post-nms-top-n", "1000", "--threshold", "0",
            str(golden_dir / "images" / run["image"]),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        (line,) = proc.stdout.splitlines()
        obj = json.loads(line)
        with Image.open(golden_dir / "images" / run["image"]) as im:
            assert (obj["width"], obj["height"]) == im.size
        faces = obj["faces"]
        _assert_detections(
            run["name"],
            np.array([f["score"] for f in faces]),
            np.array([f["box"] for f in faces]).reshape(-1, 4),
            np.array([f["pose"] for f in faces]).reshape(-1, 6),
            expected,
        )

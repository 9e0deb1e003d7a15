"""Geometry beyond the golden cases: cross-checks with SciPy, edge cases and the branches golden data misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from img2pose_core import alignment, geometry

RNG = np.random.default_rng(1234)


def test_rotations_match_scipy_including_tiny_and_near_pi_angles():
    vecs = np.concatenate(
        [
            RNG.normal(size=(200, 3)),
            RNG.normal(size=(20, 3)) * 1e-9,
            np.zeros((1, 3)),
            (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True) * (np.pi - 1e-6))(RNG.normal(size=(10, 3))),
        ]
    )
    mats = geometry.rotvec_to_matrix(torch.as_tensor(vecs)).numpy()
    np.testing.assert_allclose(mats, Rotation.from_rotvec(vecs).as_matrix(), atol=1e-12)
    back = geometry.matrix_to_rotvec(torch.as_tensor(mats)).numpy()
    np.testing.assert_allclose(back, Rotation.from_matrix(mats).as_rotvec(), atol=1e-9)


def test_non_orthogonal_matrices_take_the_nearest_rotation_like_scipy():
    mats = Rotation.random(50, random_state=3).as_matrix() + RNG.normal(scale=0.05, size=(50, 3, 3))
    ours = geometry.matrix_to_rotvec(torch.as_tensor(mats)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_matrix(mats).as_rotvec(), atol=1e-10)


def test_box_frame_round_trip_is_identity():
    n = 100
    wh = torch.as_tensor(RNG.integers(100, 2000, size=(n, 2)))
    x1 = RNG.uniform(0, 50, n)
    y1 = RNG.uniform(0, 50, n)
    boxes = torch.as_tensor(np.stack([x1, y1, x1 + RNG.uniform(20, 90, n), y1 + RNG.uniform(20, 90, n)], 1))
    local = torch.as_tensor(np.concatenate([RNG.normal(0, 0.4, (n, 3)), RNG.normal(0, 0.2, (n, 2)), RNG.uniform(2, 5, (n, 1))], 1))
    back = geometry.pose_image_to_box(geometry.pose_box_to_image(local, boxes, wh), boxes, wh)
    # The frame change is not a pure rotation, so the round trip is exact only up to orthogonalisation.
    np.testing.assert_allclose(back[:, 3:].numpy(), local[:, 3:].numpy(), atol=1e-9)
    assert (back[:, :3] - local[:, :3]).abs().max() < 0.05


def test_projection_matches_a_direct_pinhole_computation():
    pts = RNG.normal(size=(7, 3))
    pose = np.array([[0.1, -0.2, 0.3, 0.05, -0.1, 4.0]])
    k = geometry.image_intrinsics(torch.tensor([640]), torch.tensor([481]))
    assert k[0].tolist() == [[1121.0, 0.0, 320.0], [0.0, 1121.0, 240.0], [0.0, 0.0, 1.0]]
    ours = geometry.project_points(torch.as_tensor(pts), torch.as_tensor(pose), k)[0].numpy()
    cam = pts @ Rotation.from_rotvec(pose[0, :3]).as_matrix().T + pose[0, 3:]
    uv = cam[:, :2] / cam[:, 2:] * 1121.0 + np.array([320.0, 240.0])
    np.testing.assert_allclose(ours, uv, atol=1e-9)


@pytest.mark.parametrize(
    "roll, grown_side",
    [(0.0, "top"), (1.5, "right"), (-1.5, "left"), (2.8, "bottom"), (-2.8, "bottom")],
)
def test_forehead_side_follows_roll(roll, grown_side):
    lms = torch.tensor([[[100.0, 100.0], [200.0, 300.0]]])  # extent 100 x 200
    box = geometry.face_box_from_landmarks(lms, torch.tensor([roll]), torch.tensor([[1000, 1000]]))[0].tolist()
    base = [150 - 55, 200 - 110, 150 + 55, 200 + 110]  # factor 1.1 around the centre
    grow = {"top": (1, -60), "bottom": (3, 60), "left": (0, -30), "right": (2, 30)}[grown_side]
    base[grow[0]] += grow[1]
    assert box == pytest.approx(base, abs=1)


def test_face_box_is_clipped_to_the_image():
    lms = torch.tensor([[[-50.0, -20.0], [30.0, 700.0]]])
    box = geometry.face_box_from_landmarks(lms, torch.tensor([0.0]), torch.tensor([[200, 600]]))[0].tolist()
    assert box[0] == 0 and box[1] == 0 and box[3] == 600


def test_angles_follow_the_documented_convention():
    # A pure rotation about the camera's y axis by +20° (Rᵀ has b = -20°) gives yaw +20°, no pitch or roll.
    ypr = geometry.rotvec_to_yaw_pitch_roll(torch.tensor([[0.0, np.deg2rad(20), 0.0]]))[0].numpy()
    np.testing.assert_allclose(ypr, [20.0, 0.0, 0.0], atol=1e-9)
    vecs = Rotation.random(100, random_state=5).as_rotvec()
    ypr = geometry.rotvec_to_yaw_pitch_roll(torch.as_tensor(vecs)).numpy()
    a, b, c = Rotation.from_rotvec(vecs).inv().as_euler("xyz", degrees=True).T
    np.testing.assert_allclose(ypr, np.stack([-b, a, -c], 1), atol=1e-8)


def test_rescale_pose_keeps_projections_in_the_other_camera():
    pts = torch.as_tensor(RNG.normal(size=(68, 3)) * 0.1)
    pose = torch.tensor([[0.1, 0.3, -0.05, 0.2, -0.1, 5.0]], dtype=torch.float64)
    small, big = torch.tensor([[713, 400]]), torch.tensor([[1280, 718]])
    k_small = geometry.image_intrinsics(small[:, 0], small[:, 1])
    k_big = geometry.image_intrinsics(big[:, 0], big[:, 1])
    scaled = geometry.project_points(pts, pose, k_small) * torch.tensor([1280 / 713, 718 / 400])
    moved = geometry.project_points(pts, geometry.rescale_pose(pose, small, big), k_big)
    assert (moved - scaled).abs().max() < 0.05  # the fix: raw pose in the big camera is ~1 px off
    assert (geometry.project_points(pts, pose, k_big) - scaled).abs().max() > 0.2


def test_alignment_recovers_a_known_similarity_and_arcface_option():
    templates = alignment.template_for(112, "arcface")[0].astype(np.float64)
    angle, scale, shift = 0.3, 2.5, np.array([40.0, -12.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (templates - shift) @ np.linalg.inv(scale * rot).T  # points the similarity maps onto the template
    m, idx = alignment.align_matrix(torch.as_tensor(points[None]), 112, "arcface")
    mapped = points @ m[0, :, :2].numpy().T + m[0, :, 2].numpy()
    np.testing.assert_allclose(mapped, templates, atol=1e-4)
    assert idx.tolist() == [0]
    with pytest.raises(ValueError, match="112"):
        alignment.template_for(224, "arcface")
    with pytest.raises(ValueError, match="unknown alignment mode"):
        alignment.template_for(112, "mtcnn")


def test_warp_crop_puts_the_points_on_the_template():
    from PIL import Image

    img = np.zeros((200, 300, 3), np.uint8)
    src = np.array([[120.0, 80.0], [170.0, 82.0], [146.0, 110.0], [125.0, 140.0], [165.0, 141.0]])
    for x, y in src:
        img[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    m, _ = alignment.align_matrix(torch.as_tensor(src[None]), 112, "arcface")
    crop = np.asarray(alignment.warp_crop(Image.fromarray(img), m[0].numpy(), 112))
    assert crop.shape == (112, 112, 3)
    target = alignment.template_for(112, "arcface")[0]
    for x, y in target:  # each warped dot lands within ~3 px of its template point
        patch = crop[max(int(y) - 4, 0) : int(y) + 5, max(int(x) - 4, 0) : int(x) + 5, 0]
        assert patch.max() > 100, (x, y)

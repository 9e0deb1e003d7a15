"""Evaluators: zero error for the ground truth, known errors for known perturbations, on published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from img2pose_core import evaluation as ev
from img2pose_core import synthetic
from conftest import needs_golden


@pytest.fixture(scope="module")
def refs(golden_dir):
    return np.load(golden_dir / "reference_3d_68_points_trans.npy"), np.load(golden_dir / "reference_3d_5_points_trans.npy")


AFLW_YPR = np.array([[10.0, -5.0, 3.0], [-40.0, 12.0, -8.0], [65.0, 20.0, 15.0], [5.0, 120.0, 0.0]])


def _perturbed(poses, d_ypr=(0.0, 0.0, 0.0), d_t=(0.0, 0.0, 0.0)):
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 6).copy()
    ypr = ev._ypr(poses) + np.asarray(d_ypr)
    poses[:, :3] = synthetic.euler_to_rotvec(ypr)
    poses[:, 3:] += np.asarray(d_t)
    return poses


def test_aflw2000_protocol(tmp_path, refs):
    folder = synthetic.write_aflw2000_style(tmp_path / "aflw", *refs, n_images=4, ypr=AFLW_YPR)
    records = ev.load_aflw2000(folder, refs[0])
    assert len(records) == 4
    np.testing.assert_allclose(records[0]["ypr"], AFLW_YPR[0], atol=1e-9)
    truth = json.loads((folder / "image00000.json").read_text())["dofs"]
    # The target pose is EPnP of the exact projections: the true pose, to float32 precision.
    np.testing.assert_allclose(records[0]["target"], truth, atol=1e-4)

    def preds(d_ypr=(0, 0, 0), d_t=(0, 0, 0)):
        out = {}
        for r in records:
            decoy = r["box"] + np.array([150, 150, 150, 150])  # a second face that must not be matched
            poses = np.stack([_perturbed(r["target"], d_ypr, d_t)[0], _perturbed(r["target"], (30, 30, 30))[0]])
            out[r["image"]] = ev.Faces(np.stack([r["box"] + 1, decoy]), [0.5, 0.99], poses)
        return out

    exact = ev.evaluate_aflw2000(records, preds())
    assert exact["skipped"] == 1 and exact["evaluated"] == 3  # pitch 120° is beyond 99°
    for k in ("yaw", "pitch", "roll", "mae", "translation_mae"):
        assert exact[k] == pytest.approx(0, abs=1e-3)
    off = ev.evaluate_aflw2000(records, preds(d_ypr=(5, 0, 0), d_t=(0, 0, 0.1)))
    assert off["yaw"] == pytest.approx(5, abs=1e-3) and off["pitch"] == pytest.approx(0, abs=1e-3)
    assert off["mae"] == pytest.approx(5 / 3, abs=1e-3)
    assert off["tz"] == pytest.approx(0.1, abs=1e-6) and off["translation_mae"] == pytest.approx(0.1 / 3, abs=1e-6)


def test_aflw2000_target_box_is_the_expanded_box(tmp_path, refs):
    """The prediction is matched to img2pose's box of the 68 points (x 1.1, forehead 0.3), not to their extent."""
    folder = synthetic.write_aflw2000_style(tmp_path / "aflw", *refs, n_images=1, ypr=AFLW_YPR[:1])
    rec = ev.load_aflw2000(folder, refs[0])[0]
    pts = np.array(json.loads((folder / "image00000.json").read_text())["pt3d_68"])[:2].T
    lo, hi = pts.min(0), pts.max(0)
    extent = hi - lo
    centre = (lo + hi) / 2
    # Upright face: the forehead side is the top, which grows by 0.3 of the face height (limited to the image).
    assert rec["box"][1] == pytest.approx(max(0.0, centre[1] - np.trunc(1.1 * extent[1]) / 2 - 0.3 * extent[1]), abs=1.0)
    assert rec["box"][3] == pytest.approx(centre[1] + np.trunc(1.1 * extent[1]) / 2, abs=1.0)
    assert rec["box"][2] - rec["box"][0] == pytest.approx(np.trunc(extent[0] * 1.1), abs=1.0)
    # Two candidates: the raw extent of the points and the expanded box. The expanded one wins.
    raw, expanded = np.r_[lo, hi], rec["box"].astype(float)
    poses = np.stack([_perturbed(rec["target"], (20, 0, 0))[0], rec["target"]])
    got = ev.evaluate_aflw2000([rec], {rec["image"]: ev.Faces(np.stack([raw, expanded]), [0.9, 0.8], poses)})
    assert got["mae"] == pytest.approx(0, abs=1e-3)


def test_aflw2000_pick_rules():
    box = np.array([10.0, 10, 50, 50])
    far = [200, 200, 240, 240]
    # Highest IoU among scores above the threshold; ties go to the first in score order.
    f = ev.Faces([far, [10, 10, 50, 50], [10, 10, 50, 50]], [0.9, 0.8, 0.7], np.zeros((3, 6)))
    assert ev.aflw2000_pick(f, box) == 1
    # No overlap: the original keeps the last candidate above the threshold.
    f = ev.Faces([far, [300, 300, 340, 340], [0, 400, 5, 405]], [0.9, 0.5, 0.0], np.zeros((3, 6)))
    assert ev.aflw2000_pick(f, box) == 1  # score 0 is not above the threshold 0
    assert ev.aflw2000_pick(ev.Faces([far], [0.0], np.zeros((1, 6))), box) is None


def test_aflw2000_reads_mat_files_and_image_lists(tmp_path, refs):
    scipy_io = pytest.importorskip("scipy.io")
    folder = synthetic.write_aflw2000_style(tmp_path / "aflw", *refs, n_images=2, ypr=AFLW_YPR[:2])
    json_records = ev.load_aflw2000(folder, refs[0])
    for js in folder.glob("*.json"):  # the published layout: .mat files with pt3d_68 and Pose_Para (1 x 7)
        d = json.loads(js.read_text())
        scipy_io.savemat(js.with_suffix(".mat"), {"pt3d_68": np.array(d["pt3d_68"]), "Pose_Para": np.array([d["Pose_Para"]])})
        js.unlink()
    records = ev.load_aflw2000(folder, refs[0])
    assert len(records) == 2
    np.testing.assert_allclose(records[1]["ypr"], AFLW_YPR[1], atol=1e-9)
    for a, b in zip(records, json_records):  # the translation target needs no pose in the file
        np.testing.assert_allclose(a["target"], b["target"], atol=1e-9)
        np.testing.assert_array_equal(a["box"], b["box"])
    listed = tmp_path / "AFLW2000_annotations.txt"
    listed.write_text("aflw/image00001.jpg\n")
    assert [r["image"] for r in ev.load_aflw2000(listed, refs[0])] == [records[1]["image"]]


def _from_biwi_angles(roll_pitch_yaw):
    """Rotation matrices from "zxy" angles, by SciPy (an independent implementation of the convention)."""
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    return rotation.from_euler("zxy", np.asarray(roll_pitch_yaw, dtype=np.float64), degrees=True).as_matrix()


def test_biwi_angles_match_scipy():
    rng = np.random.default_rng(3)
    angles = rng.uniform([-170, -85, -170], [170, 85, 170], (200, 3))
    np.testing.assert_allclose(ev.biwi_angles(_from_biwi_angles(angles)), angles, atol=1e-9)


def test_biwi_reads_the_dataset_files(tmp_path, refs):
    frame_list = synthetic.write_biwi_style(tmp_path / "biwi", *refs, n_images=5)
    assert (tmp_path / "biwi" / "02" / "frame_00007_pose.txt").is_file()
    records = ev.load_biwi(frame_list)
    assert len(records) == 5 and all(r["image"].endswith("_rgb.png") for r in records)
    text = (tmp_path / "biwi" / "01" / "frame_00003_pose.txt").read_text()
    rotation, centre = ev.read_biwi_pose(text)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
    assert centre[2] > 100  # millimetres in front of the camera
    np.testing.assert_array_equal(records[0]["rotation"], rotation)
    # A relocated list resolves against --root; the converter's JSON gives the same records.
    moved = tmp_path / "lists" / "frames.txt"
    moved.parent.mkdir()
    moved.write_text(frame_list.read_text())
    again = ev.load_biwi(moved, root=tmp_path / "biwi")
    js = ev.write_biwi_json(again, tmp_path / "out" / "biwi_gt.json")
    for a, b in zip(records, ev.load_biwi(js)):
        assert Path(a["image"]).resolve() == Path(b["image"]).resolve()
        np.testing.assert_array_equal(a["rotation"], b["rotation"])
    with pytest.raises(FileNotFoundError, match="_pose.txt"):
        ev.load_biwi(moved)  # the frames are not beside the moved list
    with pytest.raises(ValueError, match="BIWI pose file"):
        ev.read_biwi_pose("1 2 3\n")


def test_biwi_protocol(tmp_path, refs):
    records = ev.load_biwi(synthetic.write_biwi_style(tmp_path / "biwi", *refs, n_images=3))
    w, h = 320, 240
    truth = ev.biwi_angles(np.stack([r["rotation"] for r in records]))  # roll, pitch, yaw

    def pose(angles):
        from img2pose_core import geometry
        import torch

        rotvec = geometry.matrix_to_rotvec(torch.from_numpy(_from_biwi_angles(angles)[None])).numpy()[0]
        return np.r_[rotvec, 0.0, 0.0, 1.0]

    def preds(delta, centred_score=0.95):
        out = {}
        for r, t in zip(records, truth):
            right, wrong = pose(t + np.asarray(delta)), pose(t + 20)
            boxes = [[0, 0, 20, 20], [w / 2 - 30, h / 2 - 30, w / 2 + 30, h / 2 + 30], [w / 2 - 10, h / 2 - 10, w / 2 + 10, h / 2 + 10]]
            # corner face (high score), the true centred face, a centred face below the threshold
            out[r["image"]] = ev.Faces(boxes, [0.99, centred_score, 0.5], np.stack([wrong, right, wrong]), w, h)
        return out

    exact = ev.evaluate_biwi(records, preds((0, 0, 0)))
    assert exact["evaluated"] == 3 and exact["mae"] == pytest.approx(0, abs=1e-4)
    off = ev.evaluate_biwi(records, preds((2, -4, 0)))  # roll +2, pitch -4
    assert off["yaw"] == pytest.approx(0, abs=1e-4)
    assert off["pitch"] == pytest.approx(4, abs=1e-4) and off["roll"] == pytest.approx(2, abs=1e-4)
    # None above 0.9 but the corner face: it is evaluated (the nearest-centre rule has one candidate).
    assert ev.evaluate_biwi(records, preds((0, 0, 0), centred_score=0.9))["mae"] == pytest.approx(20, abs=1e-3)
    # Nothing above 0.9: the top box is evaluated, and the frame still counts.
    low = {k: ev.Faces(f.boxes[1:], [0.6, 0.5], f.poses[1:], w, h) for k, f in preds((0, 0, 0)).items()}
    got = ev.evaluate_biwi(records, low)
    assert got["evaluated"] == 3 and got["missed"] == 0 and got["mae"] == pytest.approx(0, abs=1e-4)
    # Only a frame without any box fails.
    none = {k: ev.Faces(np.zeros((0, 4)), [], np.zeros((0, 6)), w, h) for k in low}
    assert ev.evaluate_biwi(records, none)["missed"] == 3


def test_biwi_converter_command(tmp_path, refs):
    from jobs import prepare_dataset

    frame_list = synthetic.write_biwi_style(tmp_path / "biwi", *refs, n_images=2)
    out = tmp_path / "gt" / "biwi_gt.json"
    assert prepare_dataset.main(["--format", "biwi", "--frame-list", str(frame_list), "--output", str(out)]) == 0
    assert len(ev.load_biwi(out)) == 2
    with pytest.raises(SystemExit):
        prepare_dataset.main(["--format", "biwi", "--output", str(out)])  # no --frame-list


def test_wider_ap_on_ground_truth_and_known_case(tmp_path, refs):
    folder = synthetic.write_wider_style(tmp_path / "wider", *refs, n_images=4)
    gt, keep = ev.load_wider_gt(folder)
    assert len(gt) == 4 and sum(len(v) for v in gt.values()) >= 4
    perfect = {n: ev.Faces(b, np.linspace(1, 0.5, len(b))) for n, b in gt.items()}
    assert ev.evaluate_wider(gt, keep, perfect) == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    # Half the faces found: recall stops at the found fraction.
    half = {n: ev.Faces(b[: (len(b) + 1) // 2], np.ones((len(b) + 1) // 2)) for n, b in gt.items()}
    found = sum((len(b) + 1) // 2 for b in gt.values()) / sum(len(b) for b in gt.values())
    assert ev.wider_ap(gt, keep["hard"], half) == pytest.approx(found)

    # A hand-computed case: face 0 counts in "easy", face 1 is ignored there.
    g = {"e/img": np.array([[10, 10, 60, 60], [100, 100, 150, 150.0]])}
    k = {"easy": {"e/img": np.array([0])}, "hard": {"e/img": np.array([0, 1])}}
    p = {"e/img": ev.Faces([[200, 10, 240, 50], [100, 100, 150, 150], [10, 10, 60, 60]], [0.97, 0.95, 0.5])}
    assert ev.wider_ap(g, k["easy"], p) == pytest.approx(0.5)
    assert ev.wider_ap(g, k["hard"], p) == pytest.approx(2 / 3)


def test_box_vote_and_report(tmp_path):
    b, s = ev.box_vote([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.3, 0.8])
    overlap = 100 / 142  # +1 convention: 11 x 11 boxes sharing 10 x 10
    weight = 0.3 / 0.9 * overlap
    assert len(b) == 2 and s == pytest.approx([0.9 + 0.3 * weight, 0.8])
    np.testing.assert_allclose(b[0], np.array([0, 0, 10, 10]) + weight / (1 + weight))
    js, md = ev.write_report({"aflw2000": {"yaw": 1.0, "pitch": 2.0, "roll": 3.0, "mae": 2.0}, "settings": {}}, tmp_path / "r.json")
    assert json.loads(js.read_text())["aflw2000"]["mae"] == 2.0 and "| 1.000 | 2.000 | 3.000 | 2.000 |" in md.read_text()


def test_evaluate_job_runs(tmp_path, refs, golden_bundle):
    from jobs import evaluate

    folder = synthetic.write_aflw2000_style(tmp_path / "aflw", *refs, n_images=2, size=(160, 160))
    out = tmp_path / "rep" / "aflw.json"
    assert evaluate.main(["--bundle", str(golden_bundle), "--benchmark", "aflw2000", "--data", str(folder),
                          "--output", str(out), "--min-size", "160", "--max-size", "320", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert report["aflw2000"]["images"] == 2 and report["settings"]["rpn_post_nms_top_n"] == 10
    assert out.with_suffix(".md").is_file()
    # BIWI straight from the dataset's frame list, paths relative to --root.
    frame_list = synthetic.write_biwi_style(tmp_path / "biwi", *refs, n_images=2, size=(160, 120))
    moved = tmp_path / "frames.txt"
    moved.write_text(frame_list.read_text())
    out = tmp_path / "rep" / "biwi.json"
    assert evaluate.main(["--bundle", str(golden_bundle), "--benchmark", "biwi", "--data", str(moved),
                          "--root", str(frame_list.parent), "--output", str(out), "--min-size", "160",
                          "--max-size", "320", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())["biwi"]
    assert report["images"] == 2 and report["evaluated"] + report["missed"] == 2
    # WIDER multi-scale: each scale sizes the image by its short side with no cap on the long side.
    folder = synthetic.write_wider_style(tmp_path / "wider", *refs, n_images=2, size=(160, 120))
    out = tmp_path / "rep" / "wider.json"
    assert evaluate.main(["--bundle", str(golden_bundle), "--benchmark", "wider", "--data", str(folder),
                          "--output", str(out), "--multiscale", "--scales", "120,200", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())["wider"]
    assert report["images"] == 2 and set(report) >= {"easy", "medium", "hard"}


def test_only_an_unshared_predictor_resizes(golden_bundle):
    from img2pose_core.predictor import Predictor

    shared = Predictor(golden_bundle, device="cpu", min_size=128, max_size=160)
    with pytest.raises(ValueError, match="shared=False"):
        shared.resize(200, 400)
    own = Predictor(golden_bundle, device="cpu", min_size=128, max_size=160, shared=False)
    assert own.model is not shared.model
    image = np.zeros((90, 300, 3), dtype=np.uint8)
    own.resize(90, 300)  # short side 90, long side 300: no cap
    assert own.predict([image])[0].network_size == (300, 90)
    assert shared.predict([image])[0].network_size == (160, 48)  # the shared model keeps its sizes


@needs_golden
def test_box_vote_reproduces_the_original_voting(golden_dir):
    """wider_vote.npz: 60 detection sets (empty, lone, exactly-at-threshold and inverted boxes among them)."""
    z = np.load(golden_dir / "wider_vote.npz")
    for i in range(60):
        given = z["boxes_in"][z["in_offsets"][i] : z["in_offsets"][i + 1]]
        want = z["boxes_out"][z["out_offsets"][i] : z["out_offsets"][i + 1]]
        boxes, scores = ev.box_vote(given[:, :4], given[:, 4], iou=float(z["iou_thresh"][i]))
        assert boxes.shape == (len(want), 4), i
        np.testing.assert_allclose(boxes, want[:, :4], atol=1e-5, rtol=0, err_msg=f"set {i}")
        np.testing.assert_allclose(scores, want[:, 4], atol=1e-5, rtol=0, err_msg=f"set {i}")
    assert ev.box_vote(np.zeros((0, 4)), np.zeros(0))[0].shape == (0, 4)

"""Evaluators: zero error for the ground truth, known errors for known perturbations, on published layouts."""

from __future__ import annotations

import json

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
    records = ev.load_aflw2000(folder)
    assert len(records) == 4
    np.testing.assert_allclose(records[0]["ypr"], AFLW_YPR[0], atol=1e-9)

    def preds(d_ypr=(0, 0, 0), d_t=(0, 0, 0)):
        out = {}
        for r in records:
            decoy = r["box"] + np.array([150, 150, 150, 150])  # a second face that must not be matched
            poses = np.stack([_perturbed(r["dofs"], d_ypr, d_t)[0], _perturbed(r["dofs"], (30, 30, 30))[0]])
            out[r["image"]] = ev.Faces(np.stack([r["box"] + 1, decoy]), [0.5, 0.99], poses)
        return out

    exact = ev.evaluate_aflw2000(records, preds())
    assert exact["skipped"] == 1 and exact["evaluated"] == 3  # pitch 120° is beyond 99°
    for k in ("yaw", "pitch", "roll", "mae", "translation_mae"):
        assert exact[k] == pytest.approx(0, abs=1e-6)
    off = ev.evaluate_aflw2000(records, preds(d_ypr=(5, 0, 0), d_t=(0, 0, 0.1)))
    assert off["yaw"] == pytest.approx(5, abs=1e-6) and off["pitch"] == pytest.approx(0, abs=1e-6)
    assert off["mae"] == pytest.approx(5 / 3, abs=1e-6)
    assert off["tz"] == pytest.approx(0.1, abs=1e-9) and off["translation_mae"] == pytest.approx(0.1 / 3, abs=1e-9)


def test_aflw2000_reads_mat_files(tmp_path, refs):
    scipy_io = pytest.importorskip("scipy.io")
    folder = synthetic.write_aflw2000_style(tmp_path / "aflw", *refs, n_images=2, ypr=AFLW_YPR[:2])
    for js in folder.glob("*.json"):  # the published layout: .mat files with pt3d_68 and Pose_Para (1 x 7)
        d = json.loads(js.read_text())
        scipy_io.savemat(js.with_suffix(".mat"), {"pt3d_68": np.array(d["pt3d_68"]), "Pose_Para": np.array([d["Pose_Para"]])})
        js.unlink()
    records = ev.load_aflw2000(folder)
    assert len(records) == 2 and records[0]["dofs"] is None
    np.testing.assert_allclose(records[1]["ypr"], AFLW_YPR[1], atol=1e-9)


def test_biwi_protocol(tmp_path, refs):
    gt_file = synthetic.write_biwi_style(tmp_path / "biwi", *refs, n_images=3)
    records = ev.load_biwi(gt_file)
    w, h = 320, 240

    def preds(d_ypr):
        out = {}
        for r in records:
            true = _perturbed(r["dofs"], d_ypr)[0]
            wrong = _perturbed(r["dofs"], (20, 20, 20))[0]
            boxes = [[0, 0, 20, 20], [w / 2 - 30, h / 2 - 30, w / 2 + 30, h / 2 + 30], [w / 2 - 10, h / 2 - 10, w / 2 + 10, h / 2 + 10]]
            # corner face (high score), the true centred face, a centred face below the threshold
            out[r["image"]] = ev.Faces(boxes, [0.99, 0.95, 0.5], np.stack([wrong, true, wrong]), w, h)
        return out

    assert ev.evaluate_biwi(records, preds((0, 0, 0)))["mae"] == pytest.approx(0, abs=1e-6)
    off = ev.evaluate_biwi(records, preds((0, -4, 2)))
    assert off["yaw"] == pytest.approx(0, abs=1e-6)
    assert off["pitch"] == pytest.approx(4, abs=1e-6) and off["roll"] == pytest.approx(2, abs=1e-6)


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

"""Training: pose losses against the original's golden values, PnP, dataset preparation, a short training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2pose_core import training


def _golden_arrays(golden_dir):
    d = np.load(golden_dir / "losses.npz")
    mean = torch.from_numpy(np.load(golden_dir / "pose_mean.npy"))
    std = torch.from_numpy(np.load(golden_dir / "pose_stddev.npy"))
    p5 = torch.from_numpy(np.load(golden_dir / "reference_3d_5_points_trans.npy"))
    return d, mean, std, p5


def test_losses_match_golden(golden_dir):
    d, mean, std, p5 = _golden_arrays(golden_dir)
    proposals = torch.from_numpy(d["proposal"])
    hw = torch.from_numpy(d["image_hw"])
    gt = torch.from_numpy(d["gt_global_pose"])
    pred = torch.from_numpy(d["pred_norm_dof"])
    # Vectorised targets of all 100 RoIs at once.
    target = training.pose_targets(gt, proposals, hw, mean, std)
    np.testing.assert_allclose(target.numpy(), d["target_norm_dof"], rtol=0, atol=1e-4)
    # Each case is one positive RoI alone in its batch.
    dof, pts = [], []
    for i in range(len(proposals)):
        losses = training.pose_losses(pred[i : i + 1], gt[i : i + 1], proposals[i : i + 1], hw[i : i + 1], mean, std, p5)
        dof.append(losses["loss_dof_reg"].item())
        pts.append(losses["loss_points"].item())
    np.testing.assert_allclose(dof, d["dof_loss"], rtol=1e-4)
    np.testing.assert_allclose(pts, d["points_loss"], rtol=1e-4)


def test_losses_batched_and_differentiable(golden_dir):
    d, mean, std, p5 = _golden_arrays(golden_dir)
    n = 7
    pred = torch.from_numpy(d["pred_norm_dof"][:n]).clone().requires_grad_(True)
    losses = training.pose_losses(
        pred, torch.from_numpy(d["gt_global_pose"][:n]), torch.from_numpy(d["proposal"][:n]),
        torch.from_numpy(d["image_hw"][:n]), mean, std, p5,
    )
    # A batch of n positives: the dof loss is the mean of the per-RoI sums, the points loss the mean of means.
    np.testing.assert_allclose(losses["loss_dof_reg"].item(), d["dof_loss"][:n].mean(), rtol=1e-4)
    np.testing.assert_allclose(losses["loss_points"].item(), d["points_loss"][:n].mean(), rtol=1e-4)
    (losses["loss_dof_reg"] + losses["loss_points"]).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    empty = training.pose_losses(pred[:0], torch.zeros(0, 6), torch.zeros(0, 4), torch.zeros(0, 2), mean, std, p5)
    assert empty["loss_dof_reg"].item() == 0 and empty["loss_points"].item() == 0


@pytest.fixture(scope="module")
def refs(golden_dir):
    return (np.load(golden_dir / "reference_3d_68_points_trans.npy").astype(np.float64),
            np.load(golden_dir / "reference_3d_5_points_trans.npy").astype(np.float64))


def test_pnp_recovers_synthetic_poses(refs):
    from img2pose_core import geometry, synthetic

    p68, p5 = refs
    for seed in range(3):
        scene = synthetic.make_scene(seed, p68, p5, (320, 240), (2, 4), yaw=80, pitch=40, roll=40)
        n = len(scene.dofs)
        k = geometry.image_intrinsics(torch.full((n,), 320), torch.full((n,), 240)).numpy()
        pose, rms = training.solve_pnp(p5, scene.landmarks_5, k)
        np.testing.assert_allclose(pose, scene.dofs, atol=1e-6)
        assert rms.max() < 1e-6
        pose68, _ = training.solve_pnp(p68, scene.landmarks_68, k)
        np.testing.assert_allclose(pose68, scene.dofs, atol=1e-6)


def test_synthetic_is_deterministic_and_labels_consistent(refs):
    from img2pose_core import geometry, synthetic

    a = synthetic.make_scene(7, *refs, (200, 160), 3)
    b = synthetic.make_scene(7, *refs, (200, 160), 3)
    assert (a.image == b.image).all() and np.array_equal(a.dofs, b.dofs)
    ypr = np.array([[20.0, -10.0, 5.0]])
    np.testing.assert_allclose(geometry.rotvec_to_yaw_pitch_roll(torch.from_numpy(synthetic.euler_to_rotvec(ypr))).numpy(), ypr, atol=1e-9)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, refs):
    """A small synthetic corpus in the authors' format, prepared into Parquet shards."""
    from img2pose_core import synthetic
    from jobs import prepare_dataset

    root = tmp_path_factory.mktemp("synth")
    p68, p5 = refs
    np.save(root / "p68.npy", p68.astype(np.float32))
    np.save(root / "p5.npy", p5.astype(np.float32))
    train_list = synthetic.write_annotation_dataset(root / "train_src", p68, p5, n_images=6, seed=1, size=(128, 128),
                                                    faces=(1, 2), face_px=(0.3, 0.6), unposed_fraction=0.2, empty_images=2)
    val_list = synthetic.write_annotation_dataset(root / "val_src", p68, p5, n_images=2, seed=2, size=(128, 128),
                                                  faces=(1, 2), face_px=(0.3, 0.6))
    out = root / "prepared"
    assert prepare_dataset.main(["--train-list", str(train_list), "--val-list", str(val_list), "--output", str(out),
                                 "--points-68", str(root / "p68.npy"), "--points-5", str(root / "p5.npy"),
                                 "--rows-per-shard", "4"]) == 0
    return root, out


def test_prepare_dataset_writes_shards_and_stats(prepared, refs):
    import json

    import pyarrow.parquet as pq

    root, out = prepared
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["skipped_no_pose"] >= 2 and stats["train"]["shards"] == len(list((out / "train").glob("*.parquet")))
    table = pq.read_table(out / "train").to_pylist()
    assert len(table) == stats["train"]["written"] and all(any(r["has_pose"]) for r in table)
    mean, std = np.load(out / "pose_mean.npy"), np.load(out / "pose_stddev.npy")
    assert mean.shape == (6,) and (std > 0).all()
    # Labels: the global pose from 5-point PnP in the box camera is close to the exact pose of the scene.
    src = {json.loads(p.read_text())["image_path"].split("/")[-1]: json.loads(p.read_text())
           for p in (root / "train_src" / "annotations").glob("*.json")}
    for row in table:
        rec = src[row["image_id"].split("/")[-1]]
        for d, ok, g in zip(rec["dofs"], row["has_pose"], row["global_pose"]):
            if ok:
                assert np.abs(np.asarray(g[3:]) - np.asarray(d[3:])).max() < 0.1 * abs(d[5])


def test_pose_head_batch_norm_sees_only_the_positive_rois(refs):
    """As the original: the pose branch runs on the positive RoIs only; one positive does not fail."""
    import torch

    from img2pose_core.model import Img2Pose
    from img2pose_core.training import TrainingForward

    p68, p5 = refs
    model = Img2Pose(torch.zeros(6), torch.ones(6), torch.as_tensor(p68, dtype=torch.float32)).train()
    forward = TrainingForward(model, torch.as_tensor(p5))
    norm = model.roi_heads.box_predictor.dof_pred[1]
    seen = []
    norm.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].shape[0], m.training)))
    pooled = torch.randn(5, 256, 7, 7)
    assert forward._pose_of_positives(pooled).shape == (5, 6) and seen[-1] == (5, True)
    before = norm.running_mean.clone()
    one = forward._pose_of_positives(pooled[:1])  # the original raises here
    assert one.shape == (1, 6) and seen[-1] == (1, False) and norm.training
    assert torch.equal(norm.running_mean, before)  # the single row used the running statistics, unchanged
    assert forward._pose_of_positives(pooled[:0]).shape == (0, 6) and len(seen) == 2


def test_smoke_run_as_documented(tmp_path, golden_bundle):
    """docs/training.md's smoke block, run as written: the training loss falls over the 30 steps of the
    epoch, and the evaluator reads the checkpoint."""
    import json
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "training.md").read_text()
    block = re.search(r"<!-- smoke-run -->\n```bash\n(.*?)```", text, re.S).group(1)
    (tmp_path / "jobs").symlink_to(root / "jobs")  # the block runs from the repository root
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(root), "RAY_TRAIN_V2_ENABLED": "1",
           "BUNDLE": str(golden_bundle), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (progress,) = (tmp_path / "smoke" / "runs" / "smoke").glob("checkpoint_*/progress.json")
    losses = json.loads(progress.read_text())["step_losses"]
    assert len(losses) == 30
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.75 * first, losses
    assert "step 30: loss" in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "smoke" / "report.json").read_text())
    assert report["aflw2000"]["images"] == 4
    assert report["settings"]["bundle"].rstrip("/").endswith(f"{progress.parent.name}/bundle")

    # The checkpoint is a bundle in the released layout, and the same command resumes from it.
    import torch

    from img2pose_core.bundle import open_bundle

    state = torch.load(open_bundle(progress.parent / "bundle").weights_path, map_location="cpu", weights_only=True)
    assert set(state) == {"fpn_model"} and all(k.startswith("module.") for k in state["fpn_model"])
    train_line = next(line for line in re.split(r"(?<!\\)\n", block) if "-m jobs.train" in line)
    again = subprocess.run(["bash", "-euo", "pipefail", "-c", train_line.replace("--epochs 1", "--epochs 2 --max-steps 32")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming from" in again.stderr
    steps = sorted(json.loads(p.read_text())["step"] for p in (tmp_path / "smoke" / "runs" / "smoke").glob("checkpoint_*/progress.json"))
    assert steps == [30, 32]


def test_training_doc_commands_are_complete():
    """Every command docs/training.md gives for the four job modules is accepted by that module's parser."""
    import contextlib
    import io
    from pathlib import Path

    from doc_commands import script_argv, shell_lines
    from jobs import annotate, evaluate, prepare_dataset, train

    root = Path(__file__).resolve().parents[1]
    parsers = {
        "jobs.prepare_dataset": prepare_dataset.parse_args,
        "jobs.train": lambda argv: train.build_parser().parse_args(argv),
        "jobs.evaluate": lambda argv: evaluate.build_parser().parse_args(argv),
        "jobs.annotate": annotate.parse_args,
    }
    seen = {name: 0 for name in parsers}
    for line in shell_lines(root / "docs" / "training.md"):
        for name, parse in parsers.items():
            argv = script_argv(line, name, {"BUNDLE": "/tmp/bundle"})
            if argv is None:
                continue
            seen[name] += 1
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    parse(argv)
                except SystemExit as exc:
                    raise AssertionError(f"docs/training.md: {line!r} is refused: {err.getvalue().strip()}") from exc
    assert seen["jobs.prepare_dataset"] >= 4 and seen["jobs.train"] >= 3 and seen["jobs.evaluate"] >= 5, seen

"""Shared fixtures: the golden reference data, a checkpoint built from it, and a bundle of both."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ (reference variants) and jobs/ import from the root
GOLDEN = Path(os.environ.get("IMG2POSE_GOLDEN", ROOT.parent / "shared" / "golden"))

needs_golden = pytest.mark.skipif(
    not (GOLDEN / "make_checkpoint.py").is_file(),
    reason=f"the golden reference data ({GOLDEN}) is absent",
)


def _make_checkpoint_module():
    spec = importlib.util.spec_from_file_location("golden_make_checkpoint", GOLDEN / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "make_checkpoint.py").is_file():
        pytest.skip(f"the golden reference data ({GOLDEN}) is absent")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_checkpoint(golden_dir, tmp_path_factory) -> Path:
    """The deterministic img2pose checkpoint, written by the golden ``make_checkpoint.py``."""
    import torch

    out = tmp_path_factory.mktemp("ckpt") / "img2pose_v1.pth"
    torch.save({"fpn_model": _make_checkpoint_module().make_state_dict()}, out)
    return out


@pytest.fixture(scope="session")
def golden_bundle(golden_dir, golden_checkpoint, tmp_path_factory) -> Path:
    """A bundle of the golden checkpoint, pose statistics and 3D reference points."""
    from benchmarks._common import bundle_from_golden

    return bundle_from_golden(tmp_path_factory.mktemp("bundle") / "golden", golden_dir, weights=golden_checkpoint)


@pytest.fixture(scope="session")
def bundle_05(golden_checkpoint, golden_dir, tmp_path_factory) -> Path:
    """A bundle made with ``img2pose bundle create --threshold 0.5`` (the golden weights and arrays)."""
    from img2pose_core import cli

    out = tmp_path_factory.mktemp("bundle05") / "b"
    rc = cli.main([
        "bundle", "create", "--weights", str(golden_checkpoint), "--pose-mean", str(golden_dir / "pose_mean.npy"),
        "--pose-stddev", str(golden_dir / "pose_stddev.npy"),
        "--points-68", str(golden_dir / "reference_3d_68_points_trans.npy"),
        "--points-5", str(golden_dir / "reference_3d_5_points_trans.npy"), "--out", str(out), "--threshold", "0.5",
    ])  # fmt: skip
    assert rc == 0
    return out

"""The package's RoI path (pool once, pose branch only above the threshold, vectorised post-processing)
gives the released implementation's detections, on every golden image, at the golden threshold and at
the job's 0.8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_golden

pytestmark = [needs_golden]


@pytest.fixture(scope="module")
def model(golden_bundle):
    from img2pose_core.bundle import open_bundle

    return open_bundle(golden_bundle).build_model()


@pytest.mark.parametrize("threshold", [0.0, 0.8])
def test_fast_path_equals_the_original_way(model, golden_dir, threshold):
    from benchmarks.original_way import original_way

    runs = json.loads((golden_dir / "runs.json").read_text())
    for run in runs:
        image = Image.open(golden_dir / "images" / run["image"]).convert("RGB")
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        model.configure(min_size=run["min_size"], max_size=run["max_size"])
        with torch.inference_mode():
            fast = model([tensor], threshold=threshold)[0]
            with original_way(model):
                slow = model([tensor], threshold=threshold)[0]
        assert len(fast.scores) == len(slow.scores), run["name"]
        if threshold > 0:
            assert len(fast.scores) > 0 and (fast.scores > threshold).all()
        np.testing.assert_allclose(fast.scores.numpy(), slow.scores.numpy(), atol=1e-5, err_msg=run["name"])
        np.testing.assert_allclose(fast.boxes.numpy(), slow.boxes.numpy(), atol=1e-2, err_msg=run["name"])
        np.testing.assert_allclose(fast.dofs.numpy(), slow.dofs.numpy(), atol=1e-4, err_msg=run["name"])

"""The backbone's initialisation for training from scratch: ImageNet ResNet-18 weights (downloaded through
torch's hub, here from a local HTTP server serving a file the test makes), frozen stages as the original.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from img2pose_core.model import Img2Pose
from img2pose_core.training import IMAGENET_RESNET18_URL_ENV, BackboneWeightsError, imagenet_resnet18_state_dict, init_backbone


def _model() -> Img2Pose:
    return Img2Pose(torch.zeros(6), torch.ones(6), torch.zeros(68, 3))


def _resnet18_file(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    raw = folder / "resnet18.pth"
    torch.save(state, raw)
    # torch.hub checks the file against the sha256 prefix in its name, as torchvision's files are named.
    named = folder / f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(named)
    return named, state


@pytest.fixture()
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_imagenet_weights_load_and_only_the_last_three_stages_train(tmp_path):
    path, state = _resnet18_file(tmp_path)
    model = _model()
    frozen = init_backbone(model, str(path), trainable_layers=3)
    body = model.backbone.body.state_dict()
    for key, value in body.items():
        assert torch.equal(value, state[key]), key  # batch-norm statistics included
    trainable = {n for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in {"layer2", "layer3", "layer4"} for n in trainable)
    assert {n.split(".")[0] for n in frozen} == {"conv1", "layer1"}
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    # Batch norm is frozen: its statistics are buffers, not parameters.
    assert not [n for n, _ in model.backbone.body.named_parameters() if "bn" in n]


def test_imagenet_weights_come_through_torch_hub(served, tmp_path, monkeypatch):
    folder, url = served
    path, state = _resnet18_file(folder, seed=1)
    monkeypatch.setenv(IMAGENET_RESNET18_URL_ENV, f"{url}/{path.name}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    got = imagenet_resnet18_state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    model = _model()
    init_backbone(model, "imagenet")
    assert torch.equal(model.backbone.body.state_dict()["conv1.weight"], state["conv1.weight"])
    # A file whose content does not match the hash in its name is refused.
    bad = folder / f"resnet18-{'0' * 8}.pth"
    bad.write_bytes(path.read_bytes())
    monkeypatch.setenv(IMAGENET_RESNET18_URL_ENV, f"{url}/{bad.name}")
    with pytest.raises(BackboneWeightsError, match="--backbone-weights PATH"):
        imagenet_resnet18_state_dict()


def test_offline_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGENET_RESNET18_URL_ENV, "http://127.0.0.1:9/resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(BackboneWeightsError, match="resnet18-f37072fd.pth where the network allows"):
        imagenet_resnet18_state_dict()


def test_a_file_that_is_not_a_resnet18_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BackboneWeightsError, match="not a torchvision ResNet-18"):
        init_backbone(_model(), str(tmp_path / "other.pth"))

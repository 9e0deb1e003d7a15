"""The batched predictor and ``img2pose predict``: inputs, settings, failures and their messages."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_golden
from img2pose_core import geometry
from img2pose_core.predictor import Predictor, resized_size

pytestmark = [needs_golden]

SMALL = {"min_size": 200, "max_size": 400}


@pytest.fixture(scope="module")
def astronaut(golden_dir) -> np.ndarray:
    with Image.open(golden_dir / "images" / "astronaut.jpg") as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def predictor(golden_bundle) -> Predictor:
    return Predictor(str(golden_bundle), device="cpu", threshold=0.0, **SMALL)


def test_threshold_skips_work_but_not_detections(golden_bundle, astronaut, predictor):
    everything = predictor.predict([astronaut])[0]
    t = 0.6
    above = Predictor(str(golden_bundle), device="cpu", threshold=t, **SMALL).predict([astronaut])[0]
    keep = everything.scores > t
    assert 0 < keep.sum() < len(everything)
    np.testing.assert_allclose(above.scores, everything.scores[keep], atol=1e-6)
    np.testing.assert_allclose(above.boxes, everything.boxes[keep], atol=1e-3)
    np.testing.assert_allclose(above.poses, everything.poses[keep], atol=1e-5)


def test_max_faces_keeps_the_best(golden_bundle, astronaut, predictor):
    everything = predictor.predict([astronaut])[0]
    capped = Predictor(str(golden_bundle), device="cpu", threshold=0.0, max_faces=3, **SMALL).predict([astronaut])[0]
    assert len(capped) == 3
    np.testing.assert_allclose(capped.scores, everything.scores[:3], atol=1e-6)


def test_input_types_agree(astronaut, predictor):
    as_numpy = predictor.predict([astronaut])[0]
    as_pil = predictor.predict([Image.fromarray(astronaut)])[0]
    as_uint8 = predictor.predict([torch.from_numpy(astronaut.copy()).permute(2, 0, 1)])[0]
    as_float = predictor.predict([torch.from_numpy(astronaut.copy()).permute(2, 0, 1).float() / 255])[0]
    for other in (as_pil, as_uint8, as_float):
        np.testing.assert_allclose(other.scores, as_numpy.scores, atol=1e-6)
        np.testing.assert_allclose(other.poses, as_numpy.poses, atol=1e-6)


def test_batches_keep_order_and_match_single_images(astronaut, predictor):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    tall = np.ascontiguousarray(astronaut[:, :300])
    almost = np.ascontiguousarray(astronaut[:500, :505])  # pads to the same network input as 512x512
    images = (astronaut, tall, flipped, almost)
    singles = [predictor.predict([img])[0] for img in images]
    batched = predictor.predict(list(images), batch_size=4)
    for one, many in zip(singles, batched):
        assert (one.width, one.height) == (many.width, many.height)
        assert len(one) == len(many)
        np.testing.assert_allclose(many.scores, one.scores, atol=1e-4)
        np.testing.assert_allclose(many.boxes, one.boxes, atol=1e-2)
        np.testing.assert_allclose(many.poses, one.poses, atol=1e-4)


def test_derived_geometry_is_consistent(golden_bundle, astronaut):
    p = Predictor(str(golden_bundle), device="cpu", threshold=0.5, landmarks_68=True, **SMALL)
    faces = p.predict([astronaut])[0]
    assert len(faces) > 0 and faces.landmarks_68.shape == (len(faces), 68, 2)
    # The 68-point extent contains the 5 points, and the reported box is the one derived from them.
    w, h = faces.network_size
    k = geometry.image_intrinsics(torch.tensor([w] * len(faces)), torch.tensor([h] * len(faces)))
    lms_net = geometry.project_points(torch.as_tensor(p.bundle.points_68), torch.as_tensor(faces.poses), k)
    boxes_net = geometry.face_box_from_landmarks(lms_net, torch.as_tensor(faces.poses[:, 2]), torch.tensor([[w, h]]))
    scale = np.array([faces.width / w, faces.height / h] * 2)
    np.testing.assert_allclose(faces.boxes, boxes_net.numpy() * scale, atol=1e-3)
    ypr = geometry.rotvec_to_yaw_pitch_roll(torch.as_tensor(faces.poses[:, :3])).numpy()
    np.testing.assert_allclose(faces.yaw_pitch_roll, ypr, atol=1e-9)
    assert faces.align_matrices.shape == (len(faces), 2, 3)
    mapped = np.einsum("nij,npj->npi", faces.align_matrices, np.concatenate([faces.landmarks_5, np.ones((len(faces), 5, 1))], 2))
    assert np.all((mapped > -20) & (mapped < 132)), "aligned landmarks fall inside the 112 px crop"


def test_degenerate_images_are_skipped_with_a_reason(predictor):
    assert resized_size(30000, 20, 200, 400) == (400, 0)
    faces = predictor.predict([np.zeros((20, 30000, 3), np.uint8), np.zeros((1, 1, 3), np.uint8)])
    assert faces[0].skipped and "resizes to 400x0" in faces[0].skipped and len(faces[0]) == 0
    assert faces[1].skipped is None  # 1x1 is upsampled and runs


def test_model_is_loaded_once_per_process(golden_bundle, predictor):
    again = Predictor(str(golden_bundle), device="cpu", threshold=0.3, **SMALL)
    assert again.model is predictor.model


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
        ({"threshold": 1.5}, "threshold must be in [0, 1)"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"precision": "int8"}, "precision must be fp32, bf16 or fp16"),
        ({"crop_size": 224, "align_mode": "arcface"}, "112 px crops only"),
        ({"min_size": 500, "max_size": 100}, "min_size <= max_size"),
    ],
)
def test_bad_settings_are_refused_with_a_message(golden_bundle, kwargs, message):
    with pytest.raises((ValueError, RuntimeError)) as info:
        Predictor(str(golden_bundle), **kwargs)
    assert message in str(info.value)


def test_bad_image_inputs_are_refused(predictor):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predictor.predict([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(TypeError, match="unsupported image type"):
        predictor.predict(["not an image"])


def test_predict_command_reports_bad_files_and_goes_on(golden_bundle, golden_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"<html>not a picture</html>")
    rotated = tmp_path / "rotated.jpg"
    with Image.open(golden_dir / "images" / "astronaut.jpg") as im:
        im = im.convert("RGB").resize((160, 120))
        exif = im.getexif()
        exif[0x0112] = 8  # rotate 90° for display: width and height swap
        buf = io.BytesIO()
        im.save(buf, format="JPEG", exif=exif.tobytes())
    rotated.write_bytes(buf.getvalue())
    cmd = [sys.executable, "-m", "img2pose_core.cli", "predict", "--bundle", str(golden_bundle), "--device", "cpu",
           "--min-size", "128", "--max-size", "256", "--threshold", "0.5", str(bad), str(rotated), str(tmp_path / "missing.png")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_image = {obj["image"]: obj for obj in lines}
    assert by_image[str(bad)]["error"]["status"] == "not_an_image"
    assert "HTML" in by_image[str(bad)]["error"]["message"]
    assert by_image[str(tmp_path / "missing.png")]["error"]["status"] == "unreadable"
    ok = by_image[str(rotated)]
    assert (ok["width"], ok["height"]) == (120, 160)
    for face in ok["faces"]:
        assert set(face) >= {"score", "box", "pose", "yaw", "pitch", "roll"} and face["score"] > 0.5
        assert len(face["box"]) == 4 and len(face["pose"]) == 6
    assert "2 failed" in proc.stderr


def test_predict_command_refuses_bad_arguments(golden_bundle, tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    cmd = [sys.executable, "-m", "img2pose_core.cli", "predict", "--bundle", str(golden_bundle), "--threshold", "2", str(img)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "threshold must be in [0, 1)" in proc.stderr and "Traceback" not in proc.stderr
    cmd = [sys.executable, "-m", "img2pose_core.cli", "predict", "--bundle", str(tmp_path / "nothing"), str(img)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "nothing" in proc.stderr and "Traceback" not in proc.stderr


def test_channels_last_gives_the_same_faces(golden_bundle, astronaut, predictor):
    # The default on every device; the plain NCHW layout must give the same faces.
    nchw = Predictor(str(golden_bundle), device="cpu", threshold=0.0, channels_last=False, **SMALL)
    assert nchw.model is not predictor.model and predictor.model.channels_last and not nchw.model.channels_last
    a, b = predictor.predict([astronaut])[0], nchw.predict([astronaut])[0]
    assert len(a) == len(b)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    np.testing.assert_allclose(b.poses, a.poses, atol=1e-3)


def test_reduced_decoding_reports_in_the_pictures_pixels(golden_bundle, golden_dir):
    from img2pose_core.imageio import decode_image

    data = (golden_dir / "images" / "teaser.jpg").read_bytes()
    # min 200: the model shrinks 1280x718 by ~3.6x, so JPEG can decode at 1/2 scale.
    reduced = decode_image(data, reduce_for=(200, 600))
    assert reduced.reduced and reduced.pixels.shape[:2] == (359, 640) and (reduced.width, reduced.height) == (1280, 718)
    assert not decode_image(data, reduce_for=(640, 1400)).reduced  # shrinks < 2x: full decode
    p = Predictor(str(golden_bundle), device="cpu", threshold=0.9, min_size=200, max_size=600, landmarks_68=True)
    plain = p.predict([reduced.pixels])[0]  # coordinates of the 640x359 copy
    mapped = p.predict([reduced.pixels], original_sizes=[(reduced.width, reduced.height)])[0]
    assert len(plain) == len(mapped) > 0
    assert (mapped.width, mapped.height) == (1280, 718) and mapped.network_size == plain.network_size
    sx, sy = 1280 / 640, 718 / 359
    np.testing.assert_allclose(mapped.boxes, plain.boxes * np.array([sx, sy, sx, sy]), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(mapped.landmarks_5, plain.landmarks_5 * np.array([sx, sy]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(mapped.landmarks_68, plain.landmarks_68 * np.array([sx, sy]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(mapped.poses, plain.poses)  # the pose belongs to the network's camera
    # The alignment maps the picture's landmarks onto the crop template.
    homog = np.concatenate([mapped.landmarks_5, np.ones((len(mapped), 5, 1))], axis=2)
    crop_pts = np.einsum("nij,npj->npi", mapped.align_matrices, homog)
    crop_plain = np.einsum("nij,npj->npi", plain.align_matrices, np.concatenate([plain.landmarks_5, np.ones((len(plain), 5, 1))], 2))
    np.testing.assert_allclose(crop_pts, crop_plain, atol=1e-6)

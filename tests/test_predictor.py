"""The batched predictor and ``img2pose predict``: inputs, settings, failures and their messages."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_golden
from detection_pairs import assert_same_detections
from img2pose_core import geometry
from img2pose_core.output import FACES_SCHEMA
from img2pose_core.predictor import ImageFaces, Predictor, faces_table, resized_size

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
    kept = {k: getattr(everything, k)[keep] for k in ("scores", "boxes", "poses")}
    assert_same_detections(above, kept, {"scores": 1e-6, "boxes": 1e-3, "poses": 1e-5})


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
        assert_same_detections(other, as_numpy, {"scores": 1e-6, "poses": 1e-6})


def test_batches_keep_order_and_match_single_images(astronaut, predictor):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    tall = np.ascontiguousarray(astronaut[:, :300])
    almost = np.ascontiguousarray(astronaut[:500, :505])  # pads to the same network input as 512x512
    images = (astronaut, tall, flipped, almost)
    singles = [predictor.predict([img])[0] for img in images]
    batched = predictor.predict(list(images), batch_size=4)
    for one, many in zip(singles, batched):
        assert (one.width, one.height) == (many.width, many.height)
        assert_same_detections(many, one, {"scores": 1e-4, "boxes": 1e-2, "poses": 1e-4})


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
    assert faces[0].status == "too_small"
    assert faces[1].skipped is None and faces[1].status == "ok"  # 1x1 is upsampled and runs


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
        predictor.predict([42])
    with pytest.raises(TypeError, match="unsupported image type"):
        predictor.predict([b"encoded bytes are no path"])


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
    # At threshold 0 some scores are 2.5e-6 apart: the layouts may swap such ties (the golden README's
    # "in the same order (ties in score may swap)"), so the faces are paired before they are compared.
    assert len(a) == len(b) > 100
    assert_same_detections(b, a, {"scores": 1e-4, "boxes": 1.0, "poses": 1e-3})


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


# --- Paths, EXIF orientation and tables -------------------------------------------------------------
def assert_same_faces(got: ImageFaces, want: ImageFaces) -> None:
    assert (got.width, got.height, got.network_size) == (want.width, want.height, want.network_size)
    assert got.status == "ok" and len(got) == len(want) > 0
    assert_same_detections(got, want, {"scores": 1e-5, "boxes": 1e-2, "poses": 1e-4})


@pytest.fixture()
def astronaut_png(astronaut, tmp_path):
    path = tmp_path / "astronaut.png"  # lossless: its decoded pixels are the array's
    Image.fromarray(astronaut).save(path)
    return path


def test_paths_and_uris_give_the_faces_of_their_pixels(astronaut, astronaut_png, predictor):
    import fsspec

    fsspec.filesystem("memory").pipe("/predictor-test/astronaut.png", astronaut_png.read_bytes())
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    want, want_flipped = predictor.predict([astronaut])[0], predictor.predict([flipped])[0]
    memory = "memory://predictor-test/astronaut.png"
    inputs = [str(astronaut_png), flipped, astronaut_png, astronaut_png.as_uri(), memory, astronaut]
    got = predictor.predict(inputs, batch_size=2)
    assert len(got) == len(inputs)
    for i in (0, 2, 3, 4, 5):
        assert_same_faces(got[i], want)
    assert_same_faces(got[1], want_flipped)  # in input order, though batched apart from its neighbours
    sha = hashlib.sha256(astronaut_png.read_bytes()).hexdigest()
    for i in (0, 2, 3):  # a local file is stored as its absolute path, whatever its spelling
        assert (got[i].image_uri, got[i].image_sha256) == (str(astronaut_png), sha)
    assert (got[4].image_uri, got[4].image_sha256) == (memory, sha)
    assert got[1].image_uri is None and got[5].image_sha256 is None  # pixels: no source
    assert all(r.model_sha256 == predictor.model_sha256 for r in got)


def test_exif_orientation_is_applied_to_files_and_pil_images(astronaut, predictor, tmp_path):
    # Stored turned 90° counter-clockwise; orientation 6 says "turn 90° clockwise to display".
    stored = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90).resize((256, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        raw = np.asarray(im.convert("RGB"))  # as stored, orientation not applied
        from_pil = predictor.predict([im])[0]
    upright = np.ascontiguousarray(np.rot90(raw, k=-1))  # turned clockwise by hand
    assert upright.shape[:2] == (256, 200)
    want = predictor.predict([upright])[0]
    assert (want.width, want.height) == (200, 256)
    assert_same_faces(from_pil, want)
    assert_same_faces(predictor.predict([path])[0], want)
    assert (predictor.predict([raw])[0].width, predictor.predict([raw])[0].height) == (256, 200)


def test_to_arrow_gives_rows_of_the_jobs_faces_table(astronaut_png, predictor, tmp_path):
    import pyarrow.parquet as pq

    faces = predictor.predict([astronaut_png])[0]
    n = len(faces)
    assert n > 1
    table = faces.to_arrow(run_id="run-1")
    assert table.schema.equals(FACES_SCHEMA, check_metadata=True)  # every column known: the schema itself
    assert table.num_rows == n
    col = lambda name: table[name].to_numpy()  # noqa: E731
    np.testing.assert_array_equal(col("face_index"), np.arange(n))
    np.testing.assert_array_equal(col("score"), faces.scores)
    np.testing.assert_array_equal(np.stack([col(c) for c in ("box_x1", "box_y1", "box_x2", "box_y2")], 1), faces.boxes)
    np.testing.assert_array_equal(np.stack([col(c) for c in ("rx", "ry", "rz", "tx", "ty", "tz")], 1), faces.poses)
    np.testing.assert_array_equal(np.stack([col(c) for c in ("yaw", "pitch", "roll")], 1), faces.yaw_pitch_roll)
    lms = np.stack(table["landmarks_5"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(lms, faces.landmarks_5.reshape(n, 10).astype(np.float32))
    mats = np.stack(table["align_matrix"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(mats, faces.align_matrices.reshape(n, 6))
    assert set(col("image_uri")) == {str(astronaut_png)} and set(col("run_id")) == {"run-1"}
    assert set(col("image_sha256")) == {faces.image_sha256} and set(col("model_sha256")) == {predictor.model_sha256}
    assert table["crop_uri"].null_count == n
    # A Parquet file of these rows reads back to the job's schema.
    pq.write_table(table, tmp_path / "faces.parquet")
    assert pq.read_table(tmp_path / "faces.parquet").schema.equals(FACES_SCHEMA, check_metadata=True)


def test_to_arrow_of_pixels_leaves_unknown_columns_null(astronaut, predictor):
    faces = predictor.predict([astronaut])[0]
    table = faces.to_arrow()
    unknown = {"run_id", "image_uri", "image_sha256", "crop_uri"}
    assert table.schema.names == FACES_SCHEMA.names
    for field, job in zip(table.schema, FACES_SCHEMA):
        assert field.type == job.type and field.nullable == (job.nullable or field.name in unknown), field.name
        assert table[field.name].null_count == (len(faces) if field.name in unknown else 0), field.name
    given = faces.to_arrow(image_uri="s3://KEY:SECRET@bucket/a.jpg", image_sha256="ab" * 32)
    digest = hashlib.sha256(b"KEY:SECRET").hexdigest()[:8]
    assert set(given["image_uri"].to_pylist()) == {f"s3://REDACTED-{digest}@bucket/a.jpg"}  # as the job stores it
    assert not given.schema.field("image_uri").nullable and given["image_sha256"].null_count == 0
    assert ImageFaces.empty(10, 10, (10, 10)).to_arrow().num_rows == 0


def test_to_pandas_and_faces_table(astronaut, astronaut_png, predictor):
    results = predictor.predict([astronaut_png, np.zeros((64, 64, 3), np.uint8), astronaut])
    df = results[0].to_pandas()
    assert list(df.columns) == FACES_SCHEMA.names and len(df) == len(results[0])
    np.testing.assert_array_equal(df["score"].to_numpy(), results[0].scores)
    table = faces_table(results, [None, "blank.png", "memory://astronaut.png"], run_id="r")
    # Only the arrays' image_sha256 is unknown: the job's schema, with that one column nullable, then the
    # Python API's input_index and input_name (tests/test_predictor_api.py).
    sha = FACES_SCHEMA.get_field_index("image_sha256")
    job = table.drop_columns(["input_index", "input_name"])
    assert job.schema.equals(FACES_SCHEMA.set(sha, FACES_SCHEMA.field(sha).with_nullable(True)), check_metadata=True)
    assert table.num_rows == sum(len(r) for r in results)
    uris = table["image_uri"].to_pylist()
    named = [str(astronaut_png), "blank.png", "memory://astronaut.png"]
    assert uris == [u for u, r in zip(named, results) for _ in range(len(r))]
    np.testing.assert_array_equal(table["score"].to_numpy(), np.concatenate([r.scores for r in results]))
    loose = faces_table(results)  # the arrays' images unnamed: image_uri nullable, null on their rows
    assert loose.schema.field("image_uri").nullable
    assert loose["image_uri"].null_count == len(results[1]) + len(results[2])
    with pytest.raises(ValueError, match="2 image_uris for 3 results"):
        faces_table(results, ["a", "b"])


def test_unreadable_paths_get_a_status_naming_them_and_the_others_run(astronaut_png, predictor, tmp_path):
    missing, page = tmp_path / "missing.jpg", tmp_path / "page.jpg"
    page.write_bytes(b"<html>not a picture</html>")
    got = predictor.predict([missing, str(page), astronaut_png, "nosuchscheme://user:pw@host/x.jpg"])
    assert [r.status for r in got] == ["unreadable", "not_an_image", "ok", "unreadable"]
    assert str(missing) in got[0].skipped and "No such file" in got[0].skipped
    assert str(page) in got[1].skipped and "HTML" in got[1].skipped
    assert "pw" not in got[3].skipped and "REDACTED" in got[3].skipped and "pw" not in got[3].image_uri
    assert all(len(r) == 0 and r.to_arrow().num_rows == 0 for r in (got[0], got[1], got[3]))
    assert got[2].skipped is None and len(got[2]) > 0
    assert got[0].image_uri == str(missing) and got[0].image_sha256 is None
    too_big = predictor.predict([astronaut_png], max_pixels=512 * 511)[0]
    assert too_big.status == "too_large" and "exceeds the limit" in too_big.skipped and len(too_big) == 0

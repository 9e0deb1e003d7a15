"""``img2pose render`` and ``img2pose report``: the drawing geometry, the pixels it sets, the CLI, and an
HTML report built from a real job output (one run of jobs/annotate.py on a local Ray cluster)."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import needs_golden
from img2pose_core import render, report
from img2pose_core.cli import render as render_cli, report as report_cli
from img2pose_core.render import (
    AXIS_COLOURS,
    BOX_COLOUR,
    LABEL_COLOUR,
    LANDMARK_5_COLOUR,
    LANDMARK_68_COLOUR,
    MESH_COLOUR,
    Style,
)
from img2pose_core.output import FACES_SCHEMA, IMAGES_SCHEMA
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401
from test_annotate import MODEL_ARGS, _job, _picture

pytestmark = [needs_golden]

BLACK = (0, 0, 0)
STYLE = Style(line_width=3, point_radius=2, font_size=14)
CHROMIUM = Path("/usr/bin/chromium")


def _cli(argv: list[str]) -> int:
    """The two subcommands as ``img2pose`` registers them (``register(subparsers)`` setting ``args.run``)."""
    parser = argparse.ArgumentParser(prog="img2pose")
    sub = parser.add_subparsers(dest="command", required=True)
    render_cli.register(sub)
    report_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def _colours(pixels: np.ndarray, mask: np.ndarray | None = None) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of ``pixels`` (H, W, 3), optionally only where ``mask`` is set."""
    px = pixels.reshape(-1, 3) if mask is None else pixels[mask]
    packed = np.unique((px[:, 0].astype(np.int64) << 16) | (px[:, 1].astype(np.int64) << 8) | px[:, 2])
    return {(int(v >> 16), int((v >> 8) & 255), int(v & 255)) for v in packed}


def _k(w: int, h: int) -> np.ndarray:
    return np.array([[w + h, 0, w // 2], [0, w + h, h // 2], [0, 0, 1]], dtype=np.float64)


def _pinhole(points: np.ndarray, pose: np.ndarray, wh) -> np.ndarray:
    """Independent projection (SciPy rotation, explicit K) of ``points`` (P, 3) with one pose."""
    cam = points @ Rotation.from_rotvec(pose[:3]).as_matrix().T + pose[3:]
    uvw = cam @ _k(*wh).T
    return uvw[:, :2] / uvw[:, 2:]


@pytest.fixture(scope="module")
def golden(golden_dir):
    g = np.load(golden_dir / "geometry.npz")
    return {k: g[k] for k in g.files} | {
        "points_68": np.load(golden_dir / "reference_3d_68_points_trans.npy"),
        "points_5": np.load(golden_dir / "reference_3d_5_points_trans.npy"),
    }


def _faces(golden, i: int, *, wh=None, net=None):
    """ImageFaces of golden case ``i`` (its known pose, box, 5 landmarks, angles)."""
    w, h = (int(v) for v in (golden["image_wh"][i] if wh is None else wh))
    pitch, yaw, roll = golden["pitch_yaw_roll"][i]
    return render.faces_from_columns(
        w, h, net or (w, h), scores=[0.87], boxes=golden["proj_bbox"][i][None], poses=golden["global_pose"][i][None],
        yaw_pitch_roll=[[yaw, pitch, roll]], landmarks_5=golden["lms5"][i][None],
    )  # fmt: skip


def _clear_axes_cases(golden, count: int) -> list[int]:
    """Golden cases whose three projected axes lie well inside the image, are long, and point apart."""
    ends = render.axis_endpoints(golden["global_pose"], golden["image_wh"], golden["image_wh"])
    wh = golden["image_wh"].astype(float)
    picked = []
    for i in range(len(ends)):
        e = ends[i]
        inside = np.isfinite(e).all() and (e > 20).all() and (e < wh[i] - 20).all()
        vec = e[1:] - e[0]
        length = np.linalg.norm(vec, axis=1)
        if not inside or length.min() < 60 or wh[i].prod() > 2.5e6:
            continue
        unit = vec / length[:, None]
        cos = [abs(float(unit[a] @ unit[b])) for a, b in ((0, 1), (0, 2), (1, 2))]
        if max(cos) < np.cos(np.radians(30)):
            picked.append(i)
        if len(picked) == count:
            break
    assert len(picked) == count, "the golden geometry has too few clearly drawable cases"
    return picked


# --- Geometry, without pixels ------------------------------------------------------------------------
def test_projection_reproduces_the_golden_landmarks(golden):
    wh = golden["image_wh"]
    lms68 = render.project_to_image(golden["points_68"], golden["global_pose"], wh, wh)
    lms5 = render.project_to_image(golden["points_5"], golden["global_pose"], wh, wh)
    np.testing.assert_allclose(lms68, golden["lms68"], atol=1e-4)
    np.testing.assert_allclose(lms5, golden["lms5"], atol=1e-4)


def test_projection_uses_the_network_camera_then_scales_to_original_pixels(golden):
    poses = golden["global_pose"][:20]
    original = np.array([1001, 667])
    network = np.array([383, 255])  # a resize that does not preserve the aspect exactly
    got = render.project_to_image(golden["points_5"], poses, network, original)
    for i, pose in enumerate(poses):
        expected = _pinhole(golden["points_5"].astype(np.float64), pose, network) * (original / network)
        np.testing.assert_allclose(got[i], expected, atol=1e-9)
    # Per-face cameras broadcast the same way.
    per_face = render.project_to_image(golden["points_5"], poses, np.tile(network, (20, 1)), np.tile(original, (20, 1)))
    np.testing.assert_allclose(per_face, got, atol=1e-12)


def test_axis_endpoints_are_the_projected_origin_and_axis_tips(golden):
    poses = golden["global_pose"][:25]
    network, original = np.array([640, 480]), np.array([1280, 960])
    length = 0.6
    ends = render.axis_endpoints(poses, network, original, length)
    assert ends.shape == (25, 4, 2)
    for i, pose in enumerate(poses):
        rot = Rotation.from_rotvec(pose[:3]).as_matrix()
        cam = np.vstack([pose[3:], pose[3:] + length * rot[:, 0], pose[3:] + length * rot[:, 1], pose[3:] + length * rot[:, 2]])
        uv = (cam @ _k(*network).T)[:, :2] / cam[:, 2:] * (original / network)
        np.testing.assert_allclose(ends[i], uv, atol=1e-9)
    # Axis x of an unrotated head points to the image's right, y down, z away (towards the centre).
    frontal = np.array([[0.0, 0.0, 0.0, 0.3, 0.2, 8.0]])
    e = render.axis_endpoints(frontal, (400, 300), (400, 300), 1.0)[0]
    assert e[1, 0] > e[0, 0] and abs(e[1, 1] - e[0, 1]) < 1e-9
    assert e[2, 1] > e[0, 1] and abs(e[2, 0] - e[0, 0]) < 1e-9
    assert np.linalg.norm(e[3] - np.array([200, 150])) < np.linalg.norm(e[0] - np.array([200, 150]))


def test_points_behind_the_camera_are_not_drawable():
    # A head behind the camera; a head half a unit away turned to face away, whose z tip is behind it.
    behind = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, -5.0], [0.0, np.pi, 0.0, 0.0, 0.0, 0.5]])
    e = render.axis_endpoints(behind, (100, 100), (100, 100), 1.0)
    assert np.isnan(e[0]).all()
    assert np.isfinite(e[1, :3]).all() and np.isnan(e[1, 3]).all()
    assert render.axis_endpoints(np.zeros((0, 6)), (10, 10), (10, 10)).shape == (0, 4, 2)


def test_mesh_contours_and_segment_clipping():
    lms = np.arange(2 * 68 * 2, dtype=float).reshape(2, 68, 2)
    groups = dict(render.mesh_polylines(lms))
    assert groups["jaw"].shape == (2, 17, 2) and groups["right_brow"].shape == (2, 5, 2)
    assert groups["right_eye"].shape == (2, 7, 2) and (groups["right_eye"][:, 0] == groups["right_eye"][:, -1]).all()
    assert groups["inner_lips"].shape == (2, 9, 2)
    with pytest.raises(ValueError):
        render.mesh_polylines(np.zeros((1, 5, 2)))
    p0 = np.array([[-50.0, 50.0], [10.0, 10.0], [-5.0, -5.0], [np.nan, 1.0]])
    p1 = np.array([[150.0, 50.0], [20.0, 30.0], [-1.0, -9.0], [5.0, 5.0]])
    q0, q1, visible = render.clip_segments(p0, p1, 100, 80)
    assert visible.tolist() == [True, True, False, False]
    np.testing.assert_allclose(q0[0], [0, 50])
    np.testing.assert_allclose(q1[0], [99, 50])
    np.testing.assert_allclose(np.stack([q0[1], q1[1]]), [[10, 10], [20, 30]])


def test_face_label_has_score_and_whole_degree_angles():
    assert render.face_label(0.9712, [-0.3, 12.6, -3.5]) == "0.97  yaw +0  pitch +13  roll -4"


# --- Pixels -------------------------------------------------------------------------------------------
def _distance_to_segment(xs, ys, a, b) -> np.ndarray:
    p = np.stack([xs, ys], -1).astype(np.float64)
    d = b - a
    t = np.clip(((p - a) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * d), axis=-1)


def test_axes_are_drawn_along_their_projection_and_nowhere_else(golden):
    for i in _clear_axes_cases(golden, 3):
        faces = _faces(golden, i)
        blank = Image.new("RGB", (faces.width, faces.height), BLACK)
        drawn = np.asarray(render.render_faces(blank, faces, box=False, landmarks=False, labels=False, style=STYLE))
        ends = render.axis_endpoints(faces.poses, faces.network_size, (faces.width, faces.height))[0]
        half = (STYLE.line_width + 1) / 2
        for axis, colour in enumerate(AXIS_COLOURS):
            a, b = ends[0], ends[axis + 1]
            # Along the segment (away from the shared origin) every pixel has the axis colour ...
            for t in np.linspace(0.35, 0.97, 14):
                x, y = np.rint(a + t * (b - a)).astype(int)
                assert tuple(drawn[y, x]) == colour, (i, axis, t)
            x, y = np.rint(b).astype(int)  # the tip itself: within a pixel of the stroke's end
            assert (drawn[y - 1 : y + 2, x - 1 : x + 2] == colour).all(-1).any(), (i, axis)
        # ... and nothing is drawn farther than the stroke from the three segments.
        ys, xs = np.mgrid[0 : faces.height, 0 : faces.width]
        near = np.zeros((faces.height, faces.width), bool)
        for axis in range(3):
            near |= _distance_to_segment(xs, ys, ends[0], ends[axis + 1]) <= half + 1.5
        touched = (drawn != 0).any(-1)
        assert touched.any() and not (touched & ~near).any(), i
        colours = _colours(drawn, touched)
        assert colours <= set(AXIS_COLOURS), colours - set(AXIS_COLOURS)


def test_box_and_landmarks_are_drawn_where_expected(golden):
    i = _clear_axes_cases(golden, 1)[0]
    faces = _faces(golden, i)
    size = (faces.width, faces.height)
    x1, y1, x2, y2 = (int(v) for v in golden["proj_bbox"][i])
    boxed = np.asarray(render.render_faces(Image.new("RGB", size), faces, landmarks=False, axes=False, labels=False, style=STYLE))
    for y in np.linspace(y1 + 5, y2 - 5, 12).astype(int):
        assert tuple(boxed[y, x1 + 1]) == BOX_COLOUR and tuple(boxed[y, x2 - 1]) == BOX_COLOUR
    for x in np.linspace(x1 + 5, x2 - 5, 12).astype(int):
        assert tuple(boxed[y1 + 1, x]) == BOX_COLOUR and tuple(boxed[y2 - 1, x]) == BOX_COLOUR
    assert tuple(boxed[(y1 + y2) // 2, (x1 + x2) // 2]) == BLACK
    assert _colours(boxed, (boxed != 0).any(-1)) == {BOX_COLOUR}

    # 68 landmarks, projected from the bundle's 3D reference: every one is a dot of the landmark colour.
    dots = np.asarray(render.render_faces(Image.new("RGB", size), faces, points_68=golden["points_68"], box=False,
                                          axes=False, labels=False, style=STYLE))  # fmt: skip
    for x, y in np.rint(golden["lms68"][i]).astype(int):
        if 0 <= x < size[0] and 0 <= y < size[1]:
            assert tuple(dots[y, x]) == LANDMARK_68_COLOUR, (x, y)
    assert _colours(dots, (dots != 0).any(-1)) == {LANDMARK_68_COLOUR}
    # Without them, the 5 stored landmarks.
    five = np.asarray(render.render_faces(Image.new("RGB", size), faces, box=False, axes=False, labels=False, style=STYLE))
    for x, y in np.rint(golden["lms5"][i]).astype(int):
        assert tuple(five[y, x]) == LANDMARK_5_COLOUR


def test_full_drawing_has_every_layer_and_the_label_above_the_box(golden):
    i = _clear_axes_cases(golden, 1)[0]
    faces = _faces(golden, i)
    blank = Image.new("RGB", (faces.width, faces.height))
    drawn = np.asarray(render.render_faces(blank, faces, points_68=golden["points_68"], mesh=True, style=STYLE))
    colours = _colours(drawn)
    for colour in (BOX_COLOUR, LANDMARK_68_COLOUR, MESH_COLOUR, LABEL_COLOUR, *AXIS_COLOURS):
        assert colour in colours, colour
    x1, y1 = (int(v) for v in golden["proj_bbox"][i][:2])
    band = drawn[max(0, y1 - 3 * STYLE.font_size) : y1, x1 : x1 + 200]
    assert (band == 255).all(-1).sum() > 20, "the score/angle text is written above the box"
    plain = np.asarray(render.render_faces(blank, faces, points_68=golden["points_68"], style=STYLE))
    assert MESH_COLOUR not in _colours(plain)
    # A photo keeps its pixels where nothing is drawn, and the input image is not modified.
    photo = Image.fromarray(np.full((faces.height, faces.width, 3), 77, np.uint8))
    out = np.asarray(render.render_faces(photo, faces, style=STYLE))
    assert (np.asarray(photo) == 77).all() and (out == 77).all(-1).mean() > 0.9


def test_shrinking_scales_the_geometry_not_the_picture_content(golden):
    i = _clear_axes_cases(golden, 1)[0]
    faces = _faces(golden, i)
    max_side = max(faces.width, faces.height) // 2
    small = render.render_faces(Image.new("RGB", (faces.width, faces.height)), faces, box=False, landmarks=False,
                                labels=False, max_side=max_side, style=STYLE)  # fmt: skip
    assert max(small.size) == max_side
    scale = max_side / max(faces.width, faces.height)
    ends = render.axis_endpoints(faces.poses, faces.network_size, (faces.width, faces.height))[0] * scale
    px = np.asarray(small)
    for axis, colour in enumerate(AXIS_COLOURS):
        x, y = np.rint(ends[0] + 0.8 * (ends[axis + 1] - ends[0])).astype(int)
        assert tuple(px[y, x]) == colour


def test_mismatched_image_size_and_unprojectable_faces(golden):
    faces = _faces(golden, 0)
    with pytest.raises(ValueError, match="faces belong to"):
        render.render_faces(Image.new("RGB", (10, 10)), faces)
    behind = render.faces_from_columns(100, 80, (50, 40), scores=[0.9], boxes=[[10, 10, 30, 30]],
                                       poses=[[0, 0, 0, 0, 0, -4.0]], yaw_pitch_roll=[[0, 0, 0]],
                                       landmarks_5=np.full((1, 5, 2), 20.0))  # fmt: skip
    out = np.asarray(render.render_faces(Image.new("RGB", (100, 80)), behind, box=False, landmarks=False, labels=False))
    assert not out.any()


# --- render CLI on image files -------------------------------------------------------------------------
def test_render_cli_on_image_files(golden_bundle, golden_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo = src / "..odd name;$(x).jpg"
    photo.write_bytes(_picture(golden_dir, "astronaut.jpg", 180, 7))
    (src / "notes.jpg").write_text("not an image")
    out = tmp_path / "renders"
    rc = _cli(["render", "--bundle", str(golden_bundle), "--min-size", "128", "--max-size", "256", "--threshold",
               "0.5", "--max-faces", "3", "--device", "cpu", "--mesh", str(photo), str(src / "notes.jpg"),
               "--out", str(out)])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1  # one input is not an image
    ok, bad = lines
    name = hashlib.sha256(photo.read_bytes()).hexdigest()[:16] + ".png"
    assert ok == {"image": str(photo), "render": str(out / name), "faces": ok["faces"]} and 1 <= ok["faces"] <= 3
    assert bad["image"].endswith("notes.jpg") and bad["error"]["status"] == "not_an_image"
    assert sorted(p.name for p in out.iterdir()) == [name]
    with Image.open(out / name) as im, Image.open(photo) as original:
        assert im.format == "PNG" and im.size == original.size
        px = _colours(np.asarray(im.convert("RGB")))
    assert BOX_COLOUR in px and LANDMARK_68_COLOUR in px


def test_render_cli_refuses_ambiguous_sources(tmp_path, capsys):
    assert _cli(["render", "--out", str(tmp_path / "o")]) == 2
    assert _cli(["render", "x.jpg", "--from-output", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "one of the two" in capsys.readouterr().err


# --- Synthetic tables: latest state, run filter, missing images ------------------------------------------
def _write_run(root: Path, run_id: str, images: list[dict], faces: list[dict]) -> None:
    base = {"model_sha256": "ab" * 32}
    img_rows = [{**{f.name: None for f in IMAGES_SCHEMA}, **base, "run_id": run_id,
                 "processed_at": datetime(2026, 1, 1, tzinfo=timezone.utc), **r} for r in images]  # fmt: skip
    face_rows = [{**{f.name: 0.0 for f in FACES_SCHEMA}, **base, "run_id": run_id, "crop_uri": None,
                  "landmarks_5": [10.0] * 10, "align_matrix": [1.0, 0, 0, 0, 1.0, 0], **r} for r in faces]  # fmt: skip
    for name, rows, schema in (("images", img_rows, IMAGES_SCHEMA), ("faces", face_rows, FACES_SCHEMA)):
        folder = root / name / run_id
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-{'0' * 32}.parquet")
    (root / "runs").mkdir(exist_ok=True)
    (root / "runs" / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "status": "succeeded",
        "duration_s": 2.0, "images_per_s": 1.0, "counts": {"images": len(images), "faces": len(faces)}}))  # fmt: skip


def _face(uri: str, index: int, yaw: float) -> dict:
    return {"image_uri": uri, "image_sha256": "cd" * 32, "face_index": index, "score": 0.9, "box_x1": 10.0,
            "box_y1": 10.0, "box_x2": 40.0, "box_y2": 50.0, "tz": 10.0, "yaw": yaw, "pitch": 1.0, "roll": 2.0}  # fmt: skip


def test_latest_state_and_run_filter_on_synthetic_tables(tmp_path):
    out = tmp_path / "output"
    a, b = str(tmp_path / "gone" / "a.jpg"), str(tmp_path / "gone" / "b.jpg")
    ok = {"status": "ok", "width": 64, "height": 64, "network_width": 64, "network_height": 64, "image_sha256": "cd" * 32}
    _write_run(out, "20260101T000000Z-aaaaaa", [{"image_uri": a, "status": "corrupt", "error": "damaged"},
               {"image_uri": b, **ok, "num_faces": 1}], [_face(b, 0, 5.0)])  # fmt: skip
    _write_run(out, "20260102T000000Z-bbbbbb", [{"image_uri": a, **ok, "num_faces": 2}],
               [_face(a, 0, -30.0), _face(a, 1, 30.0)])  # fmt: skip
    latest = report.OutputTables.open(str(out))
    assert latest.rows("select image_uri, status from sel_images order by 1") == [(a, "ok"), (b, "ok")]
    assert latest.one("select count(*) from sel_faces")[0] == 3
    first = report.OutputTables.open(str(out), run_id="20260101T000000Z-aaaaaa")
    assert first.rows("select image_uri, status from sel_images order by 1") == [(a, "corrupt"), (b, "ok")]
    assert first.one("select count(*) from sel_faces")[0] == 1 and len(first.runs) == 1
    with pytest.raises(report.ReportError, match="no run 'nope'"):
        report.OutputTables.open(str(out), run_id="nope")
    with pytest.raises(report.ReportError, match="no images/ table"):
        report.OutputTables.open(str(tmp_path / "gone"))
    # The images are gone: the report still builds, and says which could not be drawn.
    result = report.build_report(str(out), tmp_path / "r" / "index.html")
    page = result.html_path.read_text()
    assert result.figures["renders_shown"] == 0 and len(result.skipped) == 2
    assert "cannot read the image" in page and "No aligned crops" in page
    _check_page(page, result)


def test_report_of_an_output_without_faces(tmp_path):
    out = tmp_path / "output"
    _write_run(out, "r1", [{"image_uri": "/x/a.jpg", "status": "unreadable", "error": "cannot read /x/a.jpg"}], [])
    shutil.rmtree(out / "faces")
    result = report.build_report(str(out), tmp_path / "report.html")
    page = result.html_path.read_text()
    assert result.figures["faces"] == 0 and "cannot read /x/a.jpg" in page
    _check_page(page, result)


# --- A real job output ------------------------------------------------------------------------------
RUN_ID = "20261125T000000Z-render"


@pytest.fixture(scope="module")
def job_output(ray_head, golden_bundle, golden_dir, tmp_path_factory):
    """One run of the job with --crops 112: three photos, a damaged file and a tar shard of two photos."""
    root = tmp_path_factory.mktemp("render_report")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"p{i}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 200, 900 + i))
    (corpus / "damaged.jpg").write_bytes(_picture(golden_dir, "teaser.jpg", 200, 950)[:300])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(2):
            data = _picture(golden_dir, "teaser.jpg", 180, 960 + i)
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (corpus / "shard.tar").write_bytes(buf.getvalue())
    out = root / "output"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(root / "cache"))
    args = ["--input", str(corpus), "--output", str(out), "--bundle", str(golden_bundle), "--crops", "112",
            "--max-faces", "6", "--run-id", RUN_ID, *MODEL_ARGS]  # fmt: skip
    proc = _job(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


class _Structure(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src") or "")
        for key in ("href", "src", "action", "srcset"):
            if key in a and tag != "img":
                self.links.append(a[key] or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _check_page(page: str, result) -> _Structure:
    """Every section, every tag closed, every picture embedded, nothing fetched from anywhere."""
    parsed = _Structure()
    parsed.feed(page)
    parsed.close()
    assert not parsed.errors and not parsed.stack, (parsed.errors[:5], parsed.stack)
    assert [s for s in parsed.ids if s in dict(report.SECTIONS)] == [sid for sid, _ in report.SECTIONS]
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert all(link.startswith("#") for link in parsed.links), parsed.links
    assert not re.search(r"""(?:src|href|srcset|action)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", page, re.I)
    assert "url(" not in page and "@import" not in page
    for src in parsed.images:
        m = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:80]
        with Image.open(io.BytesIO(base64.b64decode(m.group(2)))) as im:
            assert im.format == {"png": "PNG", "jpeg": "JPEG"}[m.group(1)]
            im.load()
    for path in result.files:
        assert path.parent == result.files_dir and path.is_file() and path.stat().st_size > 0
    plots = {p.name for p in result.files_dir.glob("*.png")}
    assert {"status.png", "faces_per_image.png", "angles.png", "yaw_pitch.png", "scores.png", "face_sizes.png"} <= plots
    return parsed


def _chromium_loads(page: Path, tmp_path: Path) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return proc.stdout


def test_report_of_a_job_output(job_output, tmp_path, capsys):
    target = tmp_path / "site" / "report.html"
    assert _cli(["report", str(job_output), "--out", str(target), "--crops", "10", "--renders", "4"]) == 0
    assert str(target) in capsys.readouterr().err
    page = target.read_text()
    result = report.ReportResult(target, target.with_name("report_files"),
                                 files=sorted(target.with_name("report_files").glob("*.png")))  # fmt: skip
    parsed = _check_page(page, result)
    renders = sorted(p.name for p in result.files_dir.glob("render_*.png"))
    assert renders == [f"render_{i}.png" for i in range(4)]
    # Plots + 10 crops + 4 renders, each embedded.
    assert len(parsed.images) == 6 + 10 + 4
    assert sum(src.startswith("data:image/jpeg") for src in parsed.images) == 10
    manifest = json.loads((job_output / "runs" / f"{RUN_ID}.json").read_text())
    assert RUN_ID in page and "corrupt" in page and "Top errors" in page
    assert f"<td>faces</td><td>{manifest['counts']['faces']:,}</td>" in page
    assert f"<td>images</td><td>{manifest['counts']['images']:,}</td>" in page
    if CHROMIUM.exists():
        dom = _chromium_loads(target, tmp_path)
        for sid, _ in report.SECTIONS:
            assert f'id="{sid}"' in dom
        assert dom.count("<img") == len(parsed.images)
    else:
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium): the page was checked with html.parser only")


def test_report_run_filter_and_unknown_run(job_output, tmp_path, capsys):
    assert _cli(["report", str(job_output), "--run-id", "missing", "--out", str(tmp_path / "x.html")]) == 2
    assert "no run 'missing'" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    result = report.build_report(str(job_output), tmp_path / "one.html", run_id=RUN_ID, crops=0, renders=1)
    assert result.figures["runs"] == 1 and result.figures["crops_shown"] == 0 and result.figures["renders_shown"] == 1
    assert result.figures["images"] == 6
    _check_page(result.html_path.read_text(), result)


def test_report_reads_an_output_in_s3(job_output, ray_head, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("reports")
    for path in job_output.rglob("*"):
        if path.is_file() and "crops" not in path.parts:
            fs.put_file(str(path), f"reports/out/{path.relative_to(job_output).as_posix()}")
    result = report.build_report("s3://reports/out", tmp_path / "s3.html", s3_endpoint_url=s3_server, crops=3, renders=1)
    local = report.build_report(str(job_output), tmp_path / "local.html", crops=3, renders=1)
    for key in ("images", "ok", "faces", "runs", "manifests"):
        assert result.figures[key] == local.figures[key], key
    _check_page(result.html_path.read_text(), result)


def test_render_from_output_draws_the_stored_poses(job_output, golden_bundle, tmp_path, capsys):
    out = tmp_path / "drawn"
    assert _cli(["render", "--from-output", str(job_output), "--sample", "10", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tables = report.OutputTables.open(str(job_output))
    expected = dict(tables.rows("select image_uri, image_sha256 from images where num_faces > 0"))
    assert len(expected) == 5 and {d["image"] for d in lines} == set(expected)  # tar members included
    for d in lines:
        assert Path(d["render"]).name == expected[d["image"]][:16] + ".png" and d["run_id"] == RUN_ID
    assert sorted(p.name for p in out.iterdir()) == sorted(v[:16] + ".png" for v in expected.values())
    for d in lines:
        w, h = tables.one("select width, height from images where image_uri = ?", [d["image"]])
        with Image.open(d["render"]) as im:
            assert im.size == (w, h)

    # The stored 5 landmarks are the reference points projected in the network's camera and scaled:
    # the drawing geometry reproduces them from the stored poses alone.
    from img2pose_core.bundle import open_bundle

    points_5 = open_bundle(golden_bundle).points_5
    rows = tables.con.sql(
        "select f.rx, f.ry, f.rz, f.tx, f.ty, f.tz, f.landmarks_5, i.width, i.height, i.network_width, i.network_height "
        "from faces f join images i using (image_uri, run_id)"
    ).fetchall()
    assert rows
    for r in rows:
        got = render.project_to_image(points_5, np.array([r[:6]]), (r[9], r[10]), (r[7], r[8]))[0]
        np.testing.assert_allclose(got, np.asarray(r[6]).reshape(5, 2), atol=1e-3)

    # With a bundle the 68 landmarks (and mesh) are drawn too; a sample of 2 picks 2 images.
    with_68 = tmp_path / "with68"
    assert _cli(["render", "--from-output", str(job_output), "--bundle", str(golden_bundle), "--mesh", "--sample",
                 "2", "--seed", "x", "--out", str(with_68)]) == 0  # fmt: skip
    drawn = sorted(with_68.iterdir())
    assert len(drawn) == 2
    for path in drawn:
        with Image.open(path) as im:
            colours = _colours(np.asarray(im.convert("RGB")))
        assert LANDMARK_68_COLOUR in colours and MESH_COLOUR in colours


def test_shard_members_are_read_by_uri(job_output):
    (shard,) = job_output.parent.joinpath("corpus").glob("*.tar")
    assert report.split_shard_uri(f"{shard}#000001.jpg") == (str(shard), "000001.jpg")
    assert report.split_shard_uri("/a/b#c.jpg") == ("/a/b#c.jpg", None)
    data = report.read_uri_bytes(f"{shard}#000001.jpg")
    with tarfile.open(shard) as tar:
        assert data == tar.extractfile("000001.jpg").read()
    with pytest.raises(FileNotFoundError):
        report.read_uri_bytes(f"{shard}#nope.jpg")

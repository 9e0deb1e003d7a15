"""The Python API's traps (issue 24): a lone input is one input, every result and table row says which
input it is about, ``predict_dataframe`` loses no input, ``progress=True`` draws a bar, and
``img2pose predict`` / ``render`` report missing files before loading the model."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection_pairs import assert_same_detections
from img2pose_core import cli
from img2pose_core.cli.predict import summary
from img2pose_core.output import FACES_SCHEMA
from img2pose_core.predictor import ImageFaces, Predictor, faces_dataframe, faces_table

# Small network inputs and few faces: every run here takes a fraction of a second on a CPU.
SMALL = {"min_size": 96, "max_size": 160, "threshold": 0.9}
SMALL_FLAGS = ["--device", "cpu", "--min-size", "96", "--max-size", "160", "--threshold", "0.9"]
TOLERANCES = {"scores": 1e-5, "boxes": 1e-2, "poses": 1e-4}


@pytest.fixture(scope="module")
def picture(golden_dir) -> np.ndarray:
    with Image.open(golden_dir / "images" / "astronaut.jpg") as im:
        return np.asarray(im.convert("RGB").resize((160, 160)))


@pytest.fixture(scope="module")
def files(picture, tmp_path_factory) -> Path:
    """A folder with the picture as a PNG (lossless: its pixels are the array's) and an HTML page."""
    root = tmp_path_factory.mktemp("api-files")
    Image.fromarray(picture).save(root / "picture.png")
    (root / "page.jpg").write_bytes(b"<html>not a picture</html>")
    return root


@pytest.fixture(scope="module")
def predictor(golden_bundle) -> Predictor:
    return Predictor(str(golden_bundle), device="cpu", **SMALL)


def blank() -> np.ndarray:
    return np.full((64, 64, 3), 128, np.uint8)  # a flat grey square: no face above 0.9


@pytest.fixture(scope="module")
def mixed(picture, files, predictor) -> tuple[list, list[ImageFaces]]:
    """One call's inputs of every kind and outcome, and its results."""
    inputs = [
        picture,  # 0: ok, faces
        Image.fromarray(picture),  # 1: ok, faces
        torch.from_numpy(picture.copy()).permute(2, 0, 1),  # 2: ok, faces
        files / "picture.png",  # 3: ok, faces
        str(files / "missing.jpg"),  # 4: unreadable
        "nosuchscheme://user:pw@host/x.jpg",  # 5: unreadable, its credentials never shown
        blank(),  # 6: ok, no face
        np.zeros((2, 3000, 3), np.uint8),  # 7: too_small (resizes to 160x0 px)
        str(files / "page.jpg"),  # 8: not_an_image
    ]
    results = predictor.predict(inputs)
    assert [r.status for r in results] == ["ok"] * 4 + ["unreadable"] * 2 + ["ok", "too_small", "not_an_image"]
    assert all(len(r) > 0 for r in results[:4]) and all(len(r) == 0 for r in results[4:])
    return inputs, results


def same_faces(got: ImageFaces, want: ImageFaces) -> None:
    assert got.status == want.status == "ok" and (got.width, got.height) == (want.width, want.height)
    assert len(got) == len(want) > 0
    assert_same_detections(got, want, TOLERANCES)


# --- 1. a lone input is one input --------------------------------------------------------------------
def test_a_lone_path_is_one_input(predictor, files):
    path = files / "picture.png"
    want = predictor.predict([path])[0]
    for lone in (str(path), path, path.as_uri()):
        got = predictor.predict(lone)
        assert len(got) == 1, lone  # not one result per character
        same_faces(got[0], want)
        assert (got[0].input_index, got[0].input_name, got[0].image_uri) == (0, os.fspath(lone), str(path))
    missing = predictor.predict(str(files / "missing.jpg"))
    assert len(missing) == 1 and missing[0].status == "unreadable" and "missing.jpg" in missing[0].skipped


@pytest.fixture()
def http_root(files) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``files``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_lone_url_is_one_input(predictor, files, http_root):
    url = f"{http_root}/picture.png"
    got = predictor.predict(url)
    assert len(got) == 1
    same_faces(got[0], predictor.predict([files / "picture.png"])[0])
    assert got[0].input_name == got[0].image_uri == url


def test_a_lone_picture_is_one_input(predictor, picture):
    want = predictor.predict([picture])[0]
    tensor = torch.from_numpy(picture.copy()).permute(2, 0, 1)
    for lone, name in ((picture, "<array 0>"), (Image.fromarray(picture), "<PIL 0>"), (tensor, "<tensor 0>")):
        got = predictor.predict(lone)
        assert len(got) == 1, name  # not one result per row of pixels
        same_faces(got[0], want)
        assert (got[0].input_index, got[0].input_name) == (0, name)
    grey = predictor.predict(np.ascontiguousarray(picture[:120, :, 1]))  # (H, W): one grey picture
    assert len(grey) == 1 and (grey[0].width, grey[0].height) == (160, 120)


def test_a_stack_is_its_images(predictor, picture):
    flipped = np.ascontiguousarray(picture[:, ::-1])
    want = predictor.predict([picture, flipped])
    from_array = predictor.predict(np.stack([picture, flipped]))  # (N, H, W, 3)
    from_tensor = predictor.predict(torch.from_numpy(np.stack([picture, flipped])).permute(0, 3, 1, 2))  # (N, 3, H, W)
    for got, kind in ((from_array, "array"), (from_tensor, "tensor")):
        assert [r.input_name for r in got] == [f"<{kind} 0>", f"<{kind} 1>"]
        for g, w in zip(got, want):
            same_faces(g, w)


def test_nothing_is_split_silently(predictor, files):
    data = (files / "picture.png").read_bytes()
    for lone in (data, bytearray(data), [data]):
        with pytest.raises(TypeError, match="encoded image bytes are not an input"):
            predictor.predict(lone)
    for shape in ((160,), (1, 2, 160, 160, 3)):
        with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
            predictor.predict(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        predictor.predict(torch.zeros(160, 160))
    with pytest.raises(TypeError, match="unsupported image type int"):
        predictor.predict(42)
    assert predictor.predict([]) == [] and predictor.predict(iter([])) == []


def test_a_named_pipe_is_never_read(predictor, tmp_path):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    got: list[ImageFaces] = []
    worker = threading.Thread(target=lambda: got.extend(predictor.predict(pipe)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():
        # Stuck reading the pipe: end its read (EOF), so that the test fails instead of hanging.
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader yet: the predictor is slow, not stuck
        worker.join()
    assert len(got) == 1 and got[0].status == "not_a_file" and str(pipe) in got[0].skipped


# --- 2. every result and row names its input ---------------------------------------------------------
def test_results_carry_their_input_index_and_a_distinct_name(mixed, files):
    _, results = mixed
    assert [r.input_index for r in results] == list(range(9))
    names = [r.input_name for r in results]
    assert names[:5] == ["<array 0>", "<PIL 1>", "<tensor 2>", str(files / "picture.png"), str(files / "missing.jpg")]
    assert "pw" not in names[5] and "REDACTED" in names[5] and names[5].endswith("@host/x.jpg")
    assert names[6:8] == ["<array 6>", "<array 7>"] and names[8] == str(files / "page.jpg")
    assert len(set(names)) == len(names)


def test_faces_table_adds_the_input_columns_after_the_jobs(mixed, files):
    _, results = mixed
    table = faces_table(results)
    assert table.column_names == [*FACES_SCHEMA.names, "input_index", "input_name"]
    assert [f.type for f in table.schema][: len(FACES_SCHEMA)] == list(FACES_SCHEMA.types)
    counts = [len(r) for r in results]
    assert table.num_rows == sum(counts)
    assert table["input_index"].to_pylist() == [i for i, c in enumerate(counts) for _ in range(c)]
    assert table["input_name"].to_pylist() == [r.input_name for r in results for _ in range(len(r))]
    # The three pictures in memory are told apart by their rows.
    assert len({n for n in table["input_name"].to_pylist() if n.startswith("<")}) == 3
    named = faces_table(results, ["s3://KEY:SECRET@b/zero.png"] + [None] * 8)
    first = named.slice(0, counts[0])
    assert set(first["input_name"].to_pylist()) == set(first["image_uri"].to_pylist())
    assert "SECRET" not in first["input_name"][0].as_py() and first["input_name"][0].as_py().endswith("@b/zero.png")
    assert named["input_name"].to_pylist()[counts[0]:] == table["input_name"].to_pylist()[counts[0]:]
    lone = faces_table(results[1])  # one result, not its faces one by one
    assert lone.num_rows == counts[1] and set(lone["input_index"].to_pylist()) == {1}
    assert set(lone["input_name"].to_pylist()) == {"<PIL 1>"}
    assert faces_table([]).column_names == table.column_names


# --- 4. predict_dataframe ----------------------------------------------------------------------------
def test_predict_dataframe_has_a_row_per_face_and_per_faceless_input(predictor, mixed, files):
    inputs, results = mixed
    df = predictor.predict_dataframe(inputs)
    assert list(df.columns) == ["input_index", "input_name", "status", "error", *FACES_SCHEMA.names]
    assert len(df) == sum(max(len(r), 1) for r in results)
    assert df["input_index"].dtype == np.int64 and str(df["face_index"].dtype) == "Int32"
    assert df["input_index"].is_monotonic_increasing
    for r in results:
        rows = df[df["input_index"] == r.input_index]
        assert set(rows["input_name"]) == {r.input_name} and set(rows["status"]) == {r.status}
        if len(r):
            assert rows["face_index"].tolist() == list(range(len(r))) and rows["error"].isna().all()
            np.testing.assert_allclose(rows["score"].to_numpy(np.float64), r.scores, atol=TOLERANCES["scores"])
        else:
            assert len(rows) == 1 and rows["face_index"].isna().all() and rows["score"].isna().all()
            assert rows["landmarks_5"].isna().all()
            assert (rows["error"].isna().all() if r.status == "ok" else rows["error"].tolist() == [r.skipped])
    path_rows = df[df["input_index"] == 3]
    assert set(path_rows["image_uri"]) == {str(files / "picture.png")} and path_rows["image_sha256"].notna().all()
    assert set(df["model_sha256"]) == {predictor.model_sha256}


def test_dataframes_take_names_for_pictures(predictor, mixed):
    _, results = mixed
    df = faces_dataframe(results, ["zero.png"] + [None] * 8)
    assert set(df.loc[df["input_index"] == 0, "input_name"]) == {"zero.png"}
    assert set(df.loc[df["input_index"] == 0, "image_uri"]) == {"zero.png"}
    one = predictor.predict_dataframe([blank()], image_uris=["grey.png"])
    assert one[["input_index", "input_name", "status", "image_uri"]].values.tolist() == [[0, "grey.png", "ok", "grey.png"]]
    assert one["face_index"].isna().all()


# --- 3. progress -------------------------------------------------------------------------------------
def test_progress_draws_a_bar_over_windows_and_keeps_the_order(predictor, picture, capsys):
    # Ten different crops, one image per batch: two windows of reading and running (8 and 2).
    crops = [np.ascontiguousarray(picture[o : o + 120, o : o + 120]) for o in range(0, 40, 4)]
    singles = [predictor.predict(c, batch_size=1)[0] for c in crops]
    assert capsys.readouterr().err == ""  # no bar unless asked
    got = predictor.predict(crops, batch_size=1, progress=True)
    err = capsys.readouterr().err
    assert "10/10 images" in err and "100%" in err and "images/s" in err
    assert [r.input_index for r in got] == list(range(10)) and [r.input_name for r in got] == [f"<array {i}>" for i in range(10)]
    for g, s in zip(got, singles):
        assert len(g) == len(s)
        np.testing.assert_array_equal(g.scores, s.scores)  # the same computation: batches of one, in order
        np.testing.assert_array_equal(g.poses, s.poses)


# --- 5. the commands check files before loading the model -------------------------------------------
def test_predict_command_reports_missing_files_without_loading_the_model(tmp_path):
    pipe, missing = tmp_path / "pipe.jpg", [tmp_path / "gone.jpg", tmp_path / "also-gone.png"]
    os.mkfifo(pipe)
    # A bundle that does not exist: had the command loaded the model, it would have ended with exit 2.
    cmd = [sys.executable, "-m", "img2pose_core.cli", "predict", "--bundle", str(tmp_path / "no-bundle"),
           str(missing[0]), str(pipe), str(missing[1])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(o["image"], o["error"]["status"]) for o in lines] == [
        (str(missing[0]), "unreadable"), (str(pipe), "not_a_file"), (str(missing[1]), "unreadable")
    ]  # fmt: skip
    assert str(missing[0]) in lines[0]["error"]["message"] and "No such file" in lines[0]["error"]["message"]
    assert "0/3 images processed, 3 failed" in proc.stderr and "images/s" not in proc.stderr
    assert "no-bundle" not in proc.stderr and "Traceback" not in proc.stderr


def test_predict_command_rates_only_the_images_it_processed(golden_bundle, files, capsys):
    missing, path = str(files / "missing.jpg"), str(files / "picture.png")
    assert cli.main(["predict", "--bundle", str(golden_bundle), *SMALL_FLAGS, missing, path]) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o["image"] for o in lines] == [missing, path]
    assert lines[0]["error"]["status"] == "unreadable" and len(lines[1]["faces"]) > 0
    assert "1/2 images processed, 1 failed" in err and "images/s" in err


def test_the_rate_is_over_processed_images_only():
    assert summary(4, 1, 2.0) == "3/4 images processed, 1 failed, 2.0 s (1.50 images/s)"
    assert summary(2, 2, 0.5) == "0/2 images processed, 2 failed, 0.5 s"
    assert summary(0, 0, 0.0) == "0/0 images processed, 0 failed, 0.0 s"


def test_render_command_reports_missing_files_without_loading_the_model(tmp_path, capsys):
    missing = str(tmp_path / "gone.jpg")
    argv = ["render", "--bundle", str(tmp_path / "no-bundle"), missing, "--out", str(tmp_path / "renders")]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["error"]["status"] for line in out.splitlines()] == ["unreadable"]
    assert "0/1 images" in err and "no-bundle" not in err

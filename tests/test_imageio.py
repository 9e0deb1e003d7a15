"""Decoding of untrusted bytes: every malformed or unusual file gets its status, good ones decode right."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bad_images import make_bad_images, png_with_declared_size
from img2pose_core.imageio import ImageDecodeError, decode_image, read_image_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, make_bad_images(folder)


def test_every_file_of_the_corpus_gets_its_status(corpus):
    folder, expected = corpus
    assert len(expected) >= 25
    for name, status in expected.items():
        try:
            image = read_image_file(folder / name)
            got = "ok"
            assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3
        except ImageDecodeError as exc:
            got = exc.status
            assert exc.message, name
        allowed = {"ok", "corrupt"} if status == "corrupt_or_ok" else {status}
        assert got in allowed, f"{name}: expected {status}, got {got}"


def test_messages_say_what_is_wrong(corpus):
    folder, _ = corpus
    cases = {
        "zero_bytes.jpg": "empty file",
        "page.jpg": "HTML",
        "text.jpg": "text",
        "truncated.jpg": "truncated",
        "bomb_wide.png": "exceeds the limit",
    }
    for name, fragment in cases.items():
        with pytest.raises(ImageDecodeError) as info:
            read_image_file(folder / name)
        assert fragment in info.value.message, (name, info.value.message)


def test_pixel_guard_runs_before_decoding():
    # 60000 x 60000 declared in a 100-byte file: decoding would need ~10 GB.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_declared_size(60_000, 60_000))
    assert info.value.status == "too_large"
    small = io.BytesIO()
    Image.new("RGB", (100, 100)).save(small, format="PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(small.getvalue(), max_pixels=9_999)
    assert info.value.status == "too_large" and "10000 pixels" in info.value.message


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        read_image_file(tmp_path / "nope.jpg")
    assert info.value.status == "unreadable" and "nope.jpg" in info.value.message


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buf.getvalue())
    assert (decoded.width, decoded.height) == (20, 40)
    # After a clockwise rotation the stored left half is on top.
    assert decoded.pixels[:15, :, 0].mean() > 200 and decoded.pixels[25:, :, 0].mean() < 60


def test_sixteen_bit_and_alpha_become_sensible_rgb():
    grey16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    buf = io.BytesIO()
    grey16.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).pixels.min() == 255  # white stays white, not clipped garbage
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).pixels[0, 0].tolist() == [10, 20, 30]


def test_animation_decodes_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    px = decode_image(buf.getvalue()).pixels
    assert px[0, 0, 0] > 200 and px[0, 0, 2] < 50


def test_read_image_bytes_reads_paths_and_urls_and_names_what_it_cannot_read(tmp_path):
    import fsspec

    from img2pose_core.imageio import read_image_bytes

    path = tmp_path / "a.bin"
    path.write_bytes(b"local")
    fsspec.filesystem("memory").pipe("/imageio-test/b.bin", b"remote")
    assert read_image_bytes(path) == read_image_bytes(str(path)) == read_image_bytes(path.as_uri()) == b"local"
    assert read_image_bytes("memory://imageio-test/b.bin") == b"remote"
    for uri, words in [
        (str(tmp_path / "missing.jpg"), "No such file"),
        (str(tmp_path), "Is a directory"),
        ("memory://imageio-test/missing.jpg", "not found"),
        ("nosuchscheme://user:secret@host/x.jpg", "Protocol not known"),
    ]:
        with pytest.raises(ImageDecodeError) as info:
            read_image_bytes(uri)
        assert info.value.status == "unreadable" and words in info.value.message, uri
        assert "secret" not in info.value.message and (uri in info.value.message or "REDACTED" in info.value.message)

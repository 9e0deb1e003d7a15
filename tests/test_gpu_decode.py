"""--gpu-decode: JPEG bytes travel to the model stage and are decoded there in batches (nvJPEG on a GPU,
torchvision's libjpeg-turbo on CPU). On CPU the pixels, the statuses and the faces must be exactly those
of the load stage's own decoding, for good pictures and for the bad-file corpus alike."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bad_images import make_bad_images
from conftest import needs_golden
from test_annotate import _picture

pytestmark = [needs_golden]


def _stage_output(batch, golden_bundle, device_decode: bool) -> tuple[pa.Table, dict]:
    from img2pose_core.bundle import open_bundle
    from jobs.stages import LoadSettings, ModelStage, load_images
    from img2pose_core.storage import StorageConfig

    load = LoadSettings(storage=StorageConfig(), max_pixels=50_000_000, keep_bytes=False, device_decode=device_decode)
    decoded = list(load_images(batch, load))
    bundle = open_bundle(golden_bundle)
    stage = ModelStage(str(golden_bundle), None, bundle.digest,
                       {"device": "cpu", "min_size": 64, "max_size": 128, "threshold": 0.5, "batch_size": 4}, 2,
                       keep_bytes=False)  # fmt: skip
    tables = [stage(b) for b in decoded]
    encoded = int(sum(int(np.sum(b["encoded"])) for b in decoded))
    # What the photographs cost between the stages: their pixels, or their bytes.
    moved = sum(p.nbytes + (len(d) if d else 0) for b in decoded for u, p, d in zip(b["image_uri"], b["pixels"], b["data"])
                if "photo" in u)  # fmt: skip
    return pa.concat_tables(tables).sort_by("image_uri"), {"encoded": encoded, "bytes": moved}


def test_gpu_decode_gives_the_same_rows_and_faces_on_cpu(golden_bundle, golden_dir, tmp_path):
    expected = make_bad_images(tmp_path / "bad")
    for i in range(4):
        (tmp_path / "bad" / f"photo{i}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 480, 60 + i))
    files = sorted(str(p) for p in (tmp_path / "bad").iterdir())
    batch = {"source_uri": np.array(files, dtype=object), "kind": np.array(["file"] * len(files), dtype=object)}
    cpu, cpu_info = _stage_output(batch, golden_bundle, device_decode=False)
    dev, dev_info = _stage_output(batch, golden_bundle, device_decode=True)
    assert cpu["image_uri"].to_pylist() == dev["image_uri"].to_pylist() == files
    assert cpu["status"].to_pylist() == dev["status"].to_pylist()
    assert dict(zip(files, dev["status"].to_pylist()))[str(tmp_path / "bad" / "truncated.jpg")] == expected["truncated.jpg"]
    for column in ("width", "height", "num_faces", "network_width", "network_height", "image_sha256"):
        assert cpu[column].to_pylist() == dev[column].to_pylist(), column
    # The same faces. Reads complete in any order, so batches may group other images together, and a
    # batch of another size rounds the last bits of a convolution differently: equal to float noise.
    for uri, a, b in zip(files, cpu["faces"].to_pylist(), dev["faces"].to_pylist()):
        assert len(a) == len(b), uri
        for key in ("score", "box_x1", "box_y1", "box_x2", "box_y2", "rx", "ry", "rz", "tx", "ty", "tz"):
            np.testing.assert_allclose([f[key] for f in a], [f[key] for f in b], rtol=1e-4, atol=1e-4, err_msg=f"{uri} {key}")
    assert sum(cpu["num_faces"].to_pylist()[i] or 0 for i in range(len(files))) > 0
    # JPEGs (good, CMYK, grey, rotated, damaged) went as bytes, and far fewer of them than pixels.
    assert dev_info["encoded"] >= 8 and cpu_info["encoded"] == 0
    assert dev_info["bytes"] < cpu_info["bytes"] / 8, (dev_info, cpu_info)


def test_gpu_decode_excludes_fast_decode():
    import pytest

    from jobs.annotate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--input", "x", "--output", "y", "--gpu-decode", "--fast-decode"])

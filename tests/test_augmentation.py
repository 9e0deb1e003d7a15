"""Flip and random crop against the original's (golden flip.npz, random draws replayed), through the
training loader (``jobs.train._rows_to_batch``): boxes, landmarks, refitted poses and targets."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from conftest import needs_golden
from img2pose_core import augmentation as A

pytestmark = needs_golden


class _Replay:
    """numpy-Generator-shaped source that returns the original's recorded draws."""

    def __init__(self, flips=(), uniforms=(), randints=()) -> None:
        self.flips = [int(v) for v in flips]
        self.uniforms = [float(v) for v in uniforms if not np.isnan(v)]
        self.randints = [int(v) for v in randints if v >= 0]

    def integers(self, lo: int, hi: int) -> int:
        if (lo, hi) == (0, 2) and self.flips:
            return self.flips.pop(0)
        value = self.randints.pop(0)
        assert lo <= value < hi
        return value

    def uniform(self, a: float, b: float) -> float:
        return self.uniforms.pop(0)


def _row(w: int, h: int, boxes: np.ndarray, lms: list[np.ndarray]) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (int(w), int(h)), (200, 200, 200)).save(buf, format="PNG", compress_level=1)
    n = len(boxes)
    return {"image": buf.getvalue(), "ann_boxes": boxes.tolist(), "landmarks": [l.reshape(-1).tolist() for l in lms],
            "has_pose": [True] * n, "boxes": np.zeros((n, 4)).tolist(), "global_pose": np.zeros((n, 6)).tolist()}  # fmt: skip


def _points(golden_dir):
    return (np.load(golden_dir / "reference_3d_68_points_trans.npy"),
            np.load(golden_dir / "reference_3d_5_points_trans.npy"))  # fmt: skip


def test_flip_is_the_originals(golden_dir):
    from jobs.train import _rows_to_batch

    z = np.load(golden_dir / "flip.npz")
    off = z["face_offsets"]
    for i in range(len(z["image_wh"])):
        w, h = (int(v) for v in z["image_wh"][i])
        faces = range(off[i], off[i + 1])
        lms = [z["lms_in"][j][: z["n_lms"][j]] for j in faces]
        boxes, moved = A.flip_faces(w, z["bbox_in"][off[i]:off[i + 1]], lms) if z["flip_draw"][i] else (z["bbox_in"][off[i]:off[i + 1]], lms)
        assert np.array_equal(boxes, z["bbox_out"][off[i]:off[i + 1]]), i
        for j, l in zip(faces, moved):
            np.testing.assert_allclose(l, z["lms_out"][j][: len(l)], atol=1e-9, rtol=0)
        images, targets = _rows_to_batch([_row(w, h, z["bbox_in"][off[i]:off[i + 1]], lms)], flip=True,
                                         rng=_Replay(flips=[z["flip_draw"][i]]), points=_points(golden_dir))  # fmt: skip
        posed = z["has_pose"][off[i]:off[i + 1]]
        t = targets[0]
        assert len(t["dofs"]) == posed.sum(), i
        np.testing.assert_allclose(t["dofs"].numpy(), z["target_dofs"][off[i]:off[i + 1]][posed], atol=1e-6, rtol=0)
        np.testing.assert_allclose(t["boxes"].numpy(), z["target_boxes"][off[i]:off[i + 1]][posed], atol=1.0, rtol=0)
        assert tuple(images[0].shape[1:]) == (h, w)


def test_random_crop_is_the_originals(golden_dir):
    from jobs.train import _rows_to_batch

    z = np.load(golden_dir / "flip.npz")
    off = z["crop_face_offsets"]
    for i in range(len(z["crop_image_wh"])):
        w, h = (int(v) for v in z["crop_image_wh"][i])
        sl = slice(off[i], off[i + 1])
        lms = [z["crop_lms_in"][j][: z["crop_n_lms"][j]] for j in range(off[i], off[i + 1])]
        cut = A.random_crop(w, h, z["crop_bbox_in"][sl], lms,
                            A.RecordedDraws(z["crop_uniform_draws"][i], z["crop_randint_draws"][i]))  # fmt: skip
        assert cut.attempts == z["crop_n_attempts"][i] and (cut.crop is not None) == z["crop_ok"][i], i
        if cut.crop is not None:
            assert cut.crop == tuple(int(v) for v in z["crop_box"][i])
            assert np.array_equal(cut.kept, z["crop_kept"][sl])
        kept = np.nonzero(cut.kept)[0]
        assert np.array_equal(cut.boxes, z["crop_bbox_out"][sl][kept]), i
        images, targets = _rows_to_batch(
            [_row(w, h, z["crop_bbox_in"][sl], lms)], flip=False, crop=True, points=_points(golden_dir),
            rng=_Replay(uniforms=z["crop_uniform_draws"][i], randints=z["crop_randint_draws"][i]),
        )  # fmt: skip
        assert tuple(images[0].shape[1:]) == tuple(int(v) for v in z["crop_out_wh"][i][::-1]), i
        posed = z["crop_has_pose"][sl][kept]
        t = targets[0]
        np.testing.assert_allclose(t["dofs"].numpy(), z["crop_target_dofs"][sl][kept][posed], atol=1e-6, rtol=0)
        np.testing.assert_allclose(t["boxes"].numpy(), z["crop_target_boxes"][sl][kept][posed], atol=1.0, rtol=0)


def test_flip_order_is_a_mirror_permutation():
    for order in (A.FLIP_ORDER_5, A.FLIP_ORDER_68):
        assert sorted(order.tolist()) == list(range(len(order)))
        assert (order[order] == np.arange(len(order))).all()  # flipping twice gives the face back

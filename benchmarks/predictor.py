"""Benchmark img2pose inference on the golden images: model throughput and the pose post-processing.

Measures, in one run:

1. images/s of the model (``Img2Pose.forward``: resize, backbone, RPN, RoI heads, post-processing)
   at each batch size (default 1 and 8), median of ``--runs`` timed runs after a warm-up;
2. the time per image of the vectorised ``PoseRoIHeads.postprocess`` (timed on the model's own
   instance while it runs, its real inputs captured) and its share of the forward time;
3. the same post-processing done the original img2pose way (a Python loop over every candidate box in
   NumPy/SciPy float64, then torchvision ``batched_nms``), timed on the same captured inputs, the
   loop/vectorised ratio, and the largest difference between the two results;
4. how many candidate boxes reach the post-processing per image.

The original loop is kept here only, as the yardstick; it is not part of the package.

    .venv/bin/python -m benchmarks.predictor [--device cpu|cuda|auto] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor
from torchvision.ops import batched_nms

from benchmarks import _common

# Post-processing outputs are compared with these tolerances (the golden README's, tighter for poses).
TOL = {"boxes": 1.0, "scores": 1e-6, "dofs": 1e-6}


# --------------------------------------------------------------------------- the original, as a yardstick


def _camera(h: int, w: int) -> np.ndarray:
    """Integer camera matrix of a ``w x h`` image: focal w + h, centre (w // 2, h // 2)."""
    return np.array([[w + h, 0, w // 2], [0, w + h, h // 2], [0, 0, 1]])


def _box_pose_to_image(pose: np.ndarray, box: np.ndarray, h: int, w: int) -> np.ndarray:
    """One box-frame pose (float32) → image-frame pose (float64), step by step as the original does."""
    rvec = pose[:3].copy()
    tvec = pose[3:].copy()
    k_image = _camera(h, w)
    bw = box[2] - box[0]
    bh = box[3] - box[1]
    k_box = k_image.copy()
    k_box[0, 2] = box[0] + bw // 2  # written into an integer matrix: truncated
    k_box[1, 2] = box[1] + bh // 2
    tvec[2] *= k_image[0, 0] / (bw + bh)  # stays float32
    tvec = k_box.dot(tvec.T).dot(np.linalg.inv(k_image.T))
    rmat = Rotation.from_rotvec(rvec).as_matrix()
    rmat = np.linalg.inv(k_image).dot(k_box.dot(rmat))
    rvec = Rotation.from_matrix(rmat).as_rotvec()
    return np.concatenate([rvec, tvec])


def _project_68(points: np.ndarray, pose: np.ndarray, k: np.ndarray) -> np.ndarray:
    cam = points.dot(Rotation.from_rotvec(pose[:3]).as_matrix().T) + pose[3:]
    uvw = k.dot(cam.T).T
    return uvw[:, :2] / np.tile(uvw[:, 2], (2, 1)).T


def _face_box(lms: np.ndarray, roll: float, w: int, h: int, fx: float, fy: float, forehead: float) -> np.ndarray:
    """The original's box around projected landmarks: scaled, forehead side by roll, truncated, clipped."""
    min_x, max_x = np.min(lms[:, 0]), np.max(lms[:, 0])
    min_y, max_y = np.min(lms[:, 1]), np.max(lms[:, 1])
    size_x = int((max_x - min_x) * fx)
    size_y = int((max_y - min_y) * fy)
    cx = 0.5 * min_x + 0.5 * max_x
    cy = 0.5 * min_y + 0.5 * max_y
    x1, x2 = cx - size_x * 0.5, cx + size_x * 0.5
    y1, y2 = cy - size_y * 0.5, cy + size_y * 0.5
    if abs(roll) > 2.5:
        y2 += forehead * (max_y - min_y)
    elif roll > 1:
        x2 += forehead * (max_x - min_x)
    elif roll < -1:
        x1 -= forehead * (max_x - min_x)
    else:
        y1 -= forehead * (max_y - min_y)
    x1, y1, x2, y2 = (np.float64(v).astype(np.int32) for v in (x1, y1, x2, y2))
    left = 0 if min(x1, 0) < 0 else x1
    top = 0 if min(y1, 0) < 0 else y1
    right = w if max(x2 - w, 0) > 0 else x2
    bottom = h if max(y2 - h, 0) > 0 else y2
    return np.array([left, top, right, bottom])


def postprocess_loop(heads, dofs, boxes, scores, image_index, image_hw, num_images):
    """``PoseRoIHeads.postprocess`` the original way: per image, per candidate box, NumPy/SciPy float64.

    Same inputs and outputs (one ``(boxes, scores, dofs)`` triple per image) as the vectorised method.
    """
    s = heads.settings
    device = dofs.device
    mean = heads.pose_mean.cpu().numpy()
    std = heads.pose_stddev.cpu().numpy()
    points = heads.points_68.cpu().numpy()
    outputs = []
    for i in range(num_images):
        mine = image_index == i
        sc = scores[mine]
        if sc.numel() == 0:
            outputs.append((torch.zeros((0, 4), device=device), sc, torch.zeros((0, 6), device=device)))
            continue
        h, w = (int(v) for v in image_hw[mine][0].tolist())
        k_image = _camera(h, w)
        local = dofs[mine].float().cpu().numpy() * std + mean  # float32, as the original
        bxs = boxes[mine].float().cpu().numpy()
        face_boxes, poses = [], []
        for j in range(local.shape[0]):
            pose = _box_pose_to_image(local[j], bxs[j], h, w)
            lms = _project_68(points, pose, k_image)
            face_boxes.append(_face_box(lms, pose[2], w, h, s.bbox_x_factor, s.bbox_y_factor, s.expand_forehead))
            poses.append(pose)
        fb = torch.from_numpy(np.asarray(face_boxes)).float().to(device)
        gp = torch.from_numpy(np.asarray(poses)).float().to(device)
        keep = batched_nms(fb, sc, torch.ones_like(sc, dtype=torch.int64), s.nms_thresh)
        if s.max_faces is not None:
            keep = keep[: s.max_faces]
        outputs.append((fb[keep], sc[keep], gp[keep]))
    return outputs


# --------------------------------------------------------------------------- instrumentation


class PostprocessProbe:
    """Stands in for ``heads.postprocess`` on the instance: times every call and keeps its inputs."""

    def __init__(self, heads, device: torch.device) -> None:
        self.heads, self.device = heads, device
        self.method = heads.postprocess  # the bound method of the class
        self.times: list[float] = []
        self.args: list[tuple] = []

    def __call__(self, *args):
        _common.synchronize(self.device)
        start = time.perf_counter()
        out = self.method(*args)
        _common.synchronize(self.device)
        self.times.append(time.perf_counter() - start)
        self.args.append(args)
        return out

    def reset(self) -> None:
        self.times.clear()
        self.args.clear()

    def __enter__(self) -> "PostprocessProbe":
        self.heads.postprocess = self  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.heads.postprocess


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def compare(vectorised, loop) -> dict[str, float]:
    """Largest differences per output between the two post-processings (inf when counts differ)."""
    out = {"boxes": 0.0, "scores": 0.0, "dofs": 0.0, "count_mismatch": 0}
    for v, (lb, ls, ld) in zip(vectorised, loop):
        if len(v.scores) != len(ls):
            out["count_mismatch"] += 1
        out["boxes"] = max(out["boxes"], _max_diff(v.boxes, lb))
        out["scores"] = max(out["scores"], _max_diff(v.scores, ls))
        out["dofs"] = max(out["dofs"], _max_diff(v.dofs, ld))
    return out


# --------------------------------------------------------------------------- the benchmark


def _golden_check(batches, detections) -> list[str]:
    """The batch-1 detections of the golden runs at 400/1400 against ``detections.npz`` (sanity check)."""
    golden = _common.golden_dir()
    with np.load(golden / "detections.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    lines = []
    for batch, (det,) in zip(batches, detections):
        name = batch[0][0].split(".")[0] + "_400_1400"
        if f"{name}/scores" not in expected:
            continue
        exp = [expected[f"{name}/{k}"] for k in ("boxes", "scores", "dofs")]
        got = [det.boxes, det.scores, det.dofs]
        if len(exp[1]) != len(got[1]):
            lines.append(f"golden check {name}: {len(got[1])} faces, golden {len(exp[1])}: DIFFERENT")
            continue
        d = [float(np.abs(g.double().cpu().numpy() - e).max(initial=0.0)) for g, e in zip(got, exp)]
        ok = d[0] <= 1.0 and d[1] <= 1e-4 and d[2] <= 1e-3
        lines.append(f"golden check {name}: {len(exp[1])} faces, max diff boxes {d[0]:.1e} px, scores {d[1]:.1e}, "
                     f"dofs {d[2]:.1e}: {'OK' if ok else 'DIFFERENT'}")  # fmt: skip
    return lines


def _short(name: str) -> str:
    return name.split(".")[0].split("_")[0]


def batches_for(images: list[tuple[str, Tensor]], batch_size: int) -> list[list[tuple[str, Tensor]]]:
    """The golden images cycled to fill whole batches, enough batches to cover each image once."""
    n_batches = math.ceil(len(images) / batch_size)
    cycled = [images[i % len(images)] for i in range(n_batches * batch_size)]
    return [cycled[i : i + batch_size] for i in range(0, len(cycled), batch_size)]


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _common.resolve_device(args.device)
    info = _common.machine_info(device)
    settings = dict(min_size=args.min_size, max_size=args.max_size, rpn_pre_nms_top_n=6000,
                    rpn_post_nms_top_n=1000, threshold=0.0)  # fmt: skip
    print("img2pose predictor benchmark")
    print(_common.machine_header(info))
    print(
        f"settings: min_size {args.min_size}, max_size {args.max_size}, RPN top-n 6000/1000, threshold 0.0, "
        f"fp32, {args.runs} timed runs (median) after {args.warmup} warm-up; post-processing repeats {args.post_runs}"
    )

    t0 = time.perf_counter()
    model = _common.build_golden_model(device, **settings)
    images = [(name, img.to(device)) for name, img in _common.load_golden_images()]
    heads = model.roi_heads
    print(f"model built in {time.perf_counter() - t0:.1f}s; images: "
          + ", ".join(f"{n} {img.shape[2]}x{img.shape[1]}" for n, img in images))  # fmt: skip

    results: dict = {"machine": info, "settings": {**settings, "runs": args.runs, "warmup": args.warmup}, "batches": []}
    throughput_rows, post_rows, candidate_rows, counts, golden_lines, legend = [], [], [], [], [], []
    all_ok = True

    for batch_size in args.batch_sizes:
        batches = batches_for(images, batch_size)
        n_images = sum(len(b) for b in batches)
        composition = f"{len(batches)} x {batch_size}"
        legend.append(f"   batch {batch_size}: " + " | ".join(",".join(_short(n) for n, _ in b) for b in batches))

        with PostprocessProbe(heads, device) as probe, torch.inference_mode():

            def one_run(batch_times: list[float]):
                out = []
                for b in batches:
                    _common.synchronize(device)
                    start = time.perf_counter()
                    out.append(model([img for _, img in b], threshold=0.0))
                    _common.synchronize(device)
                    batch_times.append(time.perf_counter() - start)
                return out

            for _ in range(args.warmup):
                one_run([])
            timing = _common.Timing()
            post_per_run, batch_times = [], []  # post-processing time per run, forward time [run][batch]
            for _ in range(args.runs):
                probe.reset()
                times: list[float] = []
                detections = one_run(times)
                timing.times.append(sum(times))
                batch_times.append(times)
                post_per_run.append(sum(probe.times))
            captured = list(probe.args)  # inputs of each batch's postprocess call, last run

        forward = timing.median
        post_in_forward = float(np.median(post_per_run))
        share = sum(post_per_run) / sum(timing.times)
        n_dets = sum(len(d.scores) for run_out in detections for d in run_out)
        throughput_rows.append([
            batch_size, composition, f"{forward * 1000:.0f}", f"{n_images / forward:.2f}",
            f"{forward / n_images * 1000:.0f}", f"{post_in_forward / n_images * 1000:.2f}", f"{share * 100:.2f}%",
        ])  # fmt: skip

        # Vectorised vs. loop on the very same captured inputs, batch by batch.
        batch_records, vec_total, loop_total = [], 0.0, 0.0
        for bi, (call, batch) in enumerate(zip(captured, batches)):
            with torch.inference_mode():
                tv, vec_out = _common.time_runs(lambda: heads.postprocess(*call), args.post_runs, 1, device)
                tl, loop_out = _common.time_runs(lambda: postprocess_loop(heads, *call), args.loop_runs, 0, device)
            d = compare(vec_out, loop_out)
            ok = d["count_mismatch"] == 0 and all(d[k] <= TOL[k] for k in TOL)
            all_ok &= ok
            n = len(batch)
            index, num = call[3], call[5]
            per = torch.bincount(index.cpu(), minlength=num).tolist()
            counts.extend(zip((name for name, _ in batch), per))
            fwd = float(np.median([t[bi] for t in batch_times]))
            faces = sum(len(o.scores) for o in vec_out)
            vec_total += tv.median
            loop_total += tl.median
            label = f"b{batch_size} " + (_short(batch[0][0]) if n == 1 else f"{n} images")
            label += f" #{bi + 1}" if n > 1 and len(batches) > 1 else ""
            post_rows.append([
                label, sum(per), faces, f"{fwd / n * 1000:.0f}", f"{tv.median / n * 1000:.2f}",
                f"{tv.median / fwd * 100:.2f}%", f"{tl.median / n * 1000:.1f}", f"{tl.median / tv.median:.0f}x",
                f"{d['boxes']:.1e}", f"{d['scores']:.1e}", f"{d['dofs']:.1e}", "yes" if ok else "NO",
            ])  # fmt: skip
            batch_records.append({
                "images": [name for name, _ in batch], "candidates": per, "faces": faces,
                "forward_s": fwd, "postprocess_vectorised": tv.to_dict(), "postprocess_loop": tl.to_dict(),
                "loop_over_vectorised": tl.median / tv.median, "max_abs_diff": d, "equal": ok,
            })  # fmt: skip
        if batch_size == args.batch_sizes[0]:
            candidate_rows = list(counts)
        counts.clear()
        results["batches"].append({
            "batch_size": batch_size,
            "images_per_s": n_images / forward,
            "run": timing.to_dict(),
            "images_per_run": n_images,
            "forward_per_image_s": forward / n_images,
            "postprocess_in_forward_per_image_s": post_in_forward / n_images,
            "postprocess_share": share,
            "detections": n_dets,
            "postprocess_vectorised_per_image_s": vec_total / n_images,
            "postprocess_loop_per_image_s": loop_total / n_images,
            "loop_over_vectorised": loop_total / vec_total,
            "per_batch": batch_records,
        })  # fmt: skip
        if batch_size == 1 and args.min_size == 400 and args.max_size == 1400:
            golden_lines = _golden_check(batches, detections)

    print()
    print("1. Model throughput: Img2Pose.forward (resize, backbone, RPN, RoI heads, post-processing) on the golden")
    print("   images cycled to fill each batch; a run = 'batches x size' forward calls; post = the vectorised")
    print("   postprocess timed inside those calls, share = its part of the run time")
    for line in legend:
        print(line)
    print(_common.format_table(
        ["batch", "run", "run ms", "images/s", "ms/image", "post ms/image", "post share"],
        throughput_rows,
    ))  # fmt: skip
    print()
    print("2-3. Post-processing, timed again on the inputs captured from the last run, per batch: the vectorised")
    print(f"   PoseRoIHeads.postprocess (median of {args.post_runs}) vs. the original per-box NumPy/SciPy loop (median of")
    print(f"   {args.loop_runs}); 'share' = vectorised time / that batch's forward time; d = max abs difference of the")
    print("   two outputs (boxes px, scores, dofs), same face count required for 'equal'")
    print(_common.format_table(
        ["batch", "candidates", "faces", "fwd ms/img", "vector ms/img", "share", "loop ms/img", "loop/vector",
         "d boxes", "d scores", "d dofs", "equal"],
        post_rows,
    ))  # fmt: skip
    print()
    print(f"4. Candidate boxes reaching post-processing per image (score > 0.05, batch {args.batch_sizes[0]}): "
          + ", ".join(f"{n} {c}" for n, c in candidate_rows))  # fmt: skip
    for line in golden_lines:
        print(line)
    if not all_ok:
        print("MISMATCH: the loop and vectorised post-processing disagree beyond", TOL)
    if args.json:
        _common.write_json(args.json, results)
        print(f"figures written to {args.json}")
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available; default)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per batch size (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per batch size")
    p.add_argument("--post-runs", type=int, default=10, help="repeats of the vectorised post-processing")
    p.add_argument("--loop-runs", type=int, default=1, help="repeats of the original loop post-processing")
    p.add_argument("--min-size", type=int, default=400)
    p.add_argument("--max-size", type=int, default=1400)
    p.add_argument("--batch-sizes", default="1,8", type=lambda s: [int(v) for v in s.split(",") if v.strip()],
                   help="comma-separated batch sizes (default 1,8)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.runs < 1 or args.post_runs < 1 or args.loop_runs < 1 or not args.batch_sizes:
        p.error("--runs, --post-runs, --loop-runs must be >= 1 and --batch-sizes non-empty")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

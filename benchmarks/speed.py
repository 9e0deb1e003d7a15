"""Speed of the predictor: images/s by batch size and setting, the fast path vs the original way,
memory, GPU utilisation, and the error of reduced precision against fp32.

    python -m benchmarks.speed [--device auto] [--images 8] [--batch-sizes 1,8] [--settings 640:1400,400:1400]

Images are 1280x720 crops of the golden photographs (all the same size, so batches are exact). Every
figure is the median of ``--runs`` timed runs after a warm-up, on the device named in the header.
Sections:
1. Predictor images/s (decoded arrays in, faces with all derived geometry out) at each batch size
   and min/max size, threshold 0.8 (the job's default); peak host RSS and peak GPU memory.
2. The model as the package runs it against the released implementation's way (NCHW, torchvision
   pooling twice, pose branch on every proposal, per-box post-processing loop;
   ``benchmarks/original_way.py``), batch 1, same weights, threshold 0.8, at each min/max setting:
   images/s of each, their ratio, and whether the detections are identical.
3. bf16 / fp16 autocast against fp32 on the golden images at 400/1400: detection counts and the
   largest differences of matched detections. On CPU both are measured for their numerics (fp16 is
   emulated there and slow; the job runs fp32 on CPU).
4. On CUDA, GPU utilisation sampled during section 1.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._common import (
    bundle_from_golden,
    format_table,
    golden_dir,
    machine_header,
    machine_info,
    resolve_device,
    synchronize,
    write_json,
)


def make_frames(n: int, golden: Path, size=(1280, 720)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    src = Image.open(golden / "images" / "teaser.jpg").convert("RGB")
    w, h = src.size
    frames = []
    for _ in range(n):
        cw = int(w * rng.uniform(0.75, 1.0))
        ch = int(cw * size[1] / size[0])
        ch = min(ch, h)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        frames.append(np.asarray(src.crop((x, y, x + cw, y + ch)).resize(size)))
    return frames


class GpuSampler:
    """Samples GPU utilisation (%) every 0.2 s in a thread, on CUDA with NVML available."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # noqa: BLE001 - NVML missing: no figure rather than no benchmark
                return
            time.sleep(0.2)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        return f"mean {statistics.mean(self.samples):.0f}%, median {statistics.median(self.samples):.0f}%"


def predictor_throughput(bundle, frames, device, batch_sizes, settings, runs) -> list[dict]:
    from img2pose_core.predictor import Predictor

    rows = []
    for min_size, max_size in settings:
        for bs in batch_sizes:
            n = max(bs, len(frames))
            images = [frames[i % len(frames)] for i in range(n)]
            p = Predictor(bundle, device=device, min_size=min_size, max_size=max_size, threshold=0.8, batch_size=bs)
            p.predict(images[:bs])  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            with GpuSampler(device) as gpu:
                for _ in range(runs):
                    synchronize(device)
                    start = time.perf_counter()
                    p.predict(images, batch_size=bs)
                    synchronize(device)
                    times.append(time.perf_counter() - start)
            med = statistics.median(times)
            rows.append({
                "min_size": min_size, "max_size": max_size, "batch": bs, "images": n,
                "images_per_s": n / med, "ms_per_image": 1000 * med / n,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                "gpu_util": gpu.summary(),
            })  # fmt: skip
            print(f"  {min_size}/{max_size} batch {bs}: {rows[-1]['images_per_s']:.2f} images/s", flush=True)
    return rows


def _forward(model, tensors, threshold):
    with torch.inference_mode():
        return model(tensors, threshold=threshold)


def fast_vs_original(bundle, frames, device, runs, min_size, max_size) -> dict:
    """The model as the package runs it against a model run the released way, same weights, batch 1.

    Ours is the ``Predictor``'s model (channels-last, pooling once, with the gather RoIAlign on CPU,
    pose branch above the threshold only, vectorised post-processing); the original way is a plain
    NCHW model with torchvision's pooling twice, the pose branch on every proposal and the per-box loop.
    """
    from benchmarks.original_way import original_way
    from img2pose_core.bundle import open_bundle
    from img2pose_core.predictor import Predictor

    ours = Predictor(bundle, device=device, min_size=min_size, max_size=max_size, threshold=0.8).model
    released = open_bundle(bundle).build_model(min_size=min_size, max_size=max_size).to(device).eval()
    tensors = [torch.from_numpy(f.copy()).permute(2, 0, 1).float().div(255).to(device) for f in frames]

    def run(model):
        return [_forward(model, [t], 0.8)[0] for t in tensors]

    variants = {"ours": ours, "original": released}
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    with original_way(released):
        for model in variants.values():
            run(model)  # warm-up
        # Interleaved, so that a change in machine load hits both alike.
        for _ in range(runs):
            for name, model in variants.items():
                synchronize(device)
                start = time.perf_counter()
                outputs[name] = run(model)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    fast, slow = outputs["ours"], outputs["original"]
    fast_s, slow_s = statistics.median(times["ours"]), statistics.median(times["original"])
    identical = all(
        len(a.scores) == len(b.scores)
        and torch.allclose(a.scores, b.scores, atol=1e-5)
        and torch.allclose(a.boxes, b.boxes, atol=1e-2)
        and torch.allclose(a.dofs, b.dofs, atol=1e-4)
        for a, b in zip(fast, slow)
    )
    n = len(tensors)
    return {"min_size": min_size, "max_size": max_size, "fast_images_per_s": n / fast_s,
            "original_images_per_s": n / slow_s, "speedup": slow_s / fast_s,
            "identical": identical, "faces": sum(len(a.scores) for a in fast)}  # fmt: skip


def _match(a, b) -> tuple[int, float, float, float]:
    """Greedy IoU matching of detections a to b: (matched, max |score|, max |box|, max |dof|)."""
    from torchvision.ops import box_iou

    if len(a.scores) == 0 or len(b.scores) == 0:
        return 0, 0.0, 0.0, 0.0
    iou = box_iou(a.boxes.float(), b.boxes.float())
    best, j = iou.max(dim=1)
    ok = best > 0.9
    if not ok.any():
        return 0, 0.0, 0.0, 0.0
    i = ok.nonzero().squeeze(1)
    j = j[ok]
    ds = (a.scores[i].float() - b.scores[j].float()).abs().max().item()
    db = (a.boxes[i].float() - b.boxes[j].float()).abs().max().item()
    dd = (a.dofs[i].float() - b.dofs[j].float()).abs().max().item()
    return int(ok.sum()), ds, db, dd


def precision_error(bundle, device, min_size: int = 400, max_size: int = 1400) -> list[dict]:
    from img2pose_core.bundle import open_bundle

    golden = golden_dir()
    model = open_bundle(bundle).build_model(min_size=min_size, max_size=max_size).to(device)
    # On CPU fp16 runs emulated (tens of seconds per image): measured for its numerics only.
    dtypes = [("bf16", torch.bfloat16), ("fp16", torch.float16)]
    rows = []
    for name in ("teaser.jpg", "astronaut.jpg"):
        img = Image.open(golden / "images" / name).convert("RGB")
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255).to(device)
        for threshold in (0.0, 0.8):
            ref = _forward(model, [t], threshold)[0]
            for label, dtype in dtypes:
                with torch.autocast(device.type, dtype=dtype):
                    low = _forward(model, [t], threshold)[0]
                matched, ds, db, dd = _match(low, ref)
                rows.append({"image": name, "threshold": threshold, "precision": label, "fp32_faces": len(ref.scores),
                             "faces": len(low.scores), "matched": matched, "max_d_score": ds, "max_d_box_px": db,
                             "max_d_dof": dd})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=8, help="frames per measurement (at least the batch size)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8 on CPU, 1,8,32 on CUDA")
    ap.add_argument("--settings", default="640:1400,400:1400", help="min:max sizes to measure")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--compare-images", type=int, default=4, help="frames for the fast-vs-original comparison")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sections", default="1,2,3", help="which sections to run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sections = {int(v) for v in args.sections.split(",")}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32" if device.type == "cuda" else "1,8")).split(",")]
    settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]
    info = machine_info(device)
    print(machine_header(info), flush=True)
    golden = golden_dir()
    frames = make_frames(max(args.images, args.compare_images), golden)
    results = {"machine": info, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(bundle_from_golden(Path(tmp) / "bundle", golden))
        if 1 in sections:
            _section_throughput(bundle, frames, device, batch_sizes, settings, args, results)
        if 2 in sections:
            _section_compare(bundle, frames, device, settings, args, results)
        if 3 in sections:
            _section_precision(bundle, device, results)
    if args.json:
        write_json(args.json, results)


def _section_throughput(bundle, frames, device, batch_sizes, settings, args, results) -> None:
    print("\n1. predictor throughput (1280x720 frames, threshold 0.8, fp32)", flush=True)
    rows = predictor_throughput(bundle, frames[: args.images], device, batch_sizes, settings, args.runs)
    results["predictor"] = rows
    print(format_table(
        ["min/max", "batch", "images", "images/s", "ms/image", "peak RSS MiB", "peak GPU MiB", "GPU util"],
        [[f"{r['min_size']}/{r['max_size']}", r["batch"], r["images"], f"{r['images_per_s']:.2f}",
          f"{r['ms_per_image']:.0f}", f"{r['peak_rss_mib']:.0f}",
          "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}", r["gpu_util"]] for r in rows],
    ))  # fmt: skip


def _section_compare(bundle, frames, device, settings, args, results) -> None:
    print("\n2. fast path vs the original way (batch 1, threshold 0.8, interleaved runs)", flush=True)
    rows = []
    for lo, hi in settings:
        rows.append(fast_vs_original(bundle, frames[: args.compare_images], device, args.runs, lo, hi))
        r = rows[-1]
        print(f"  {lo}/{hi}: ours {r['fast_images_per_s']:.3f} images/s, original way {r['original_images_per_s']:.3f} "
              f"images/s: {r['speedup']:.2f}x faster; detections identical: {r['identical']} ({r['faces']} faces)",
              flush=True)  # fmt: skip
    results["fast_vs_original"] = rows


def _section_precision(bundle, device, results) -> None:
    print("\n3. reduced precision vs fp32 (golden images, 400/1400; matched by IoU > 0.9)", flush=True)
    prec = precision_error(bundle, device)
    results["precision"] = prec
    print(format_table(
        ["image", "thr", "precision", "fp32 faces", "faces", "matched", "max d score", "max d box px", "max d dof"],
        [[r["image"], r["threshold"], r["precision"], r["fp32_faces"], r["faces"], r["matched"],
          f"{r['max_d_score']:.2e}", f"{r['max_d_box_px']:.2f}", f"{r['max_d_dof']:.2e}"] for r in prec],
    ))  # fmt: skip


if __name__ == "__main__":
    main()

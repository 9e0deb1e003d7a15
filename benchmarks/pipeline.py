"""Whole-job throughput of jobs/annotate.py next to the bare predictor, on the same images and settings.

    python -m benchmarks.pipeline [--images 64] [--min-size 256 --max-size 512] [--runs 1]

Generates N JPEGs (crops of the golden photographs, 320x240 by default), builds a bundle from the
golden checkpoint, then measures side by side in one run:

- bare predictor: one process, a loop that reads + decodes a batch of files and calls
  ``Predictor.predict`` (the same work the job does per image, without Ray);
- the bare predictor as one single-threaded process per CPU, each on its share of the files (the
  layout the job uses on CPU), timed together after their warm-up;
- the job: ``python -m jobs.annotate`` on a local Ray; its images/s is taken over the pipeline's
  execution (from the run manifest), and the whole command's wall time (Ray start-up included) is
  shown too.

The ratio job / bare is the pipeline's efficiency (aim: 0.9 or more); job / one-per-CPU says what is
left of Ray's own overhead once the layouts are the same.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import ROOT, bundle_from_golden, golden_dir, machine_header, machine_info, write_json


def make_images(folder: Path, n: int, size: tuple[int, int], golden: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    sources = [Image.open(golden / "images" / name).convert("RGB") for name in ("teaser.jpg", "astronaut.jpg")]
    paths = []
    for i in range(n):
        src = sources[i % 2]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        buf = io.BytesIO()
        src.crop((x, y, x + cw, y + ch)).resize(size).save(buf, format="JPEG", quality=90)
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def bare_predictor(paths: list[Path], bundle: Path, args) -> float:
    """Images/s of a single-process loop: read + decode a batch, predict it."""
    from img2pose_core.imageio import read_image_file
    from img2pose_core.predictor import Predictor

    predictor = Predictor(
        str(bundle), device="cpu", min_size=args.min_size, max_size=args.max_size,
        threshold=args.threshold, batch_size=args.batch_size,
    )  # fmt: skip
    predictor.predict([read_image_file(paths[0]).pixels])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(paths), args.batch_size):
        predictor.predict([read_image_file(p).pixels for p in paths[i : i + args.batch_size]])
    return len(paths) / (time.perf_counter() - start)


def _bare_worker(paths, bundle, args, barrier, out):
    import torch

    torch.set_num_threads(1)
    from img2pose_core.imageio import read_image_file
    from img2pose_core.predictor import Predictor

    predictor = Predictor(
        str(bundle), device="cpu", min_size=args.min_size, max_size=args.max_size,
        threshold=args.threshold, batch_size=args.batch_size,
    )  # fmt: skip
    predictor.predict([read_image_file(paths[0]).pixels])  # warm-up
    barrier.wait()
    start = time.time()
    for i in range(0, len(paths), args.batch_size):
        predictor.predict([read_image_file(p).pixels for p in paths[i : i + args.batch_size]])
    out.put((start, time.time()))


def bare_per_cpu(paths: list[Path], bundle: Path, args) -> float:
    """Images/s of one single-threaded predictor process per CPU, each on its share, started together
    after their warm-up: the best the bare predictor does with the machine's cores."""
    import multiprocessing as mp

    n = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = [ctx.Process(target=_bare_worker, args=(paths[i::n], bundle, args, barrier, out)) for i in range(n)]
        for proc in procs:
            proc.start()
        spans = [out.get() for _ in procs]
        for proc in procs:
            proc.join()
    finally:
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before
    return len(paths) / (max(e for _, e in spans) - min(s for s, _ in spans))


def job(folder: Path, bundle: Path, out: Path, args) -> tuple[float, float, dict]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable, "-m", "jobs.annotate", "--input", str(folder), "--output", str(out),
        "--bundle", str(bundle), "--min-size", str(args.min_size), "--max-size", str(args.max_size),
        "--threshold", str(args.threshold), "--batch-size", str(args.batch_size), "--run-id", "bench",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the job failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "runs" / "bench.json").read_text())
    return manifest["images_per_s"], len(list(folder.iterdir())) / wall, manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--max-size", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--runs", type=int, default=1, help="repeat both measurements, report medians")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()

    golden = golden_dir()
    info = machine_info("cpu")
    print(machine_header(info))
    print(
        f"workload: {args.images} JPEGs of {args.width}x{args.height}, min/max size {args.min_size}/{args.max_size}, "
        f"threshold {args.threshold}, batch {args.batch_size}, CPU"
    )
    bare, per_cpu, piped, walls = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, (args.width, args.height), golden)
        bundle = bundle_from_golden(tmp / "bundle", golden)
        for r in range(args.runs):
            bare.append(bare_predictor(paths, bundle, args))
            per_cpu.append(bare_per_cpu(paths, bundle, args))
            rate, wall_rate, manifest = job(tmp / "images", bundle, tmp / f"out{r}", args)
            piped.append(rate)
            walls.append(wall_rate)
            print(
                f"run {r + 1}: bare predictor {bare[-1]:.2f} images/s (one per CPU: {per_cpu[-1]:.2f}) | job {rate:.2f} images/s over the pipeline, "
                f"{wall_rate:.2f} images/s including Ray start-up | {manifest['counts']['faces']} faces"
            )
    b, j, w = statistics.median(bare), statistics.median(piped), statistics.median(walls)
    c = statistics.median(per_cpu)
    print(f"\nbare predictor (read + decode + predict, 1 process): {b:.2f} images/s")
    print(f"bare predictor, one 1-thread process per CPU:        {c:.2f} images/s (after warm-up)")
    print(f"job (Ray Data, local cluster, pipeline execution):   {j:.2f} images/s")
    print(f"job including Ray start-up and validation:           {w:.2f} images/s")
    print(f"pipeline efficiency (job / bare):                    {j / b:.2f}  (aim >= 0.9)")
    print(f"job / bare one per CPU:                              {j / c:.2f}")
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "bare_images_per_s": bare, "bare_per_cpu_images_per_s": per_cpu,
                               "job_images_per_s": piped, "job_wall_images_per_s": walls, "efficiency": j / b})  # fmt: skip


if __name__ == "__main__":
    main()

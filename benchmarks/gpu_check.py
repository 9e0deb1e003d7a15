"""The GPU path, proved and measured in one short run (``benchmarks/gpu_check.sh`` calls this).

Sections, each timed. A predictor setting the time budget (``--budget-s``) leaves no time for is not
measured: its row has ``images_per_s`` and the other figures null and ``skipped`` saying why, and the
Markdown says "not measured: <why>" in their place.

1. ``environment``: Python, torch, torchvision, the device, and that ``img2pose_core`` imports and runs
   with them (the device machine has its own, older torch);
2. ``golden``: every golden run on the device in fp32, against the authors' outputs within the golden
   README's tolerances;
3. ``predictor``: images/s and peak device memory at each min/max setting x batch x precision x
   compile, on 1280x720 frames at threshold 0.8;
4. ``precision``: bf16 and fp16 against fp32 on the golden images (faces matched by IoU > 0.9, their
   largest score / box / pose differences), at threshold 0 and at the job's 0.8;
5. ``pipeline``: a job-shaped run without Ray on generated 720p JPEGs: CPU decoding on the machine's
   cores (threads, as the job's load stage decodes) feeding the predictor, against batched GPU JPEG
   decoding (``torchvision.io.decode_jpeg(device=...)``): images/s of the whole pipeline and the GPU's
   busy fraction (NVML, sampled every 0.1 s);
6. ``compiled``: the predictor with ``torch.compile`` at the first setting's largest batch, in each
   precision (last: what the budget leaves).

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` and prints the Markdown.

    bash benchmarks/gpu_check.sh                      # on the device machine (docs/performance.md)
    bash benchmarks/gpu_check.sh --device cpu --quick # here and in CI: every section, small
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.gpu_rows import FIGURES, cell, not_measured  # noqa: F401 - FIGURES: the rows' contract

ROOT = Path(__file__).resolve().parents[1]

# What the check needs of ../shared/golden (carried to the device machine in .gpu_check/golden).
GOLDEN_FILES = (
    "runs.json", "detections.npz", "make_checkpoint.py", "pose_mean.npy", "pose_stddev.npy",
    "reference_3d_68_points_trans.npy", "reference_3d_5_points_trans.npy",
)  # fmt: skip


def prepare(golden: Path, dest: Path) -> None:
    """Copy what the check needs of the golden folder to ``dest`` (an ignored folder that travels)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in GOLDEN_FILES:
        shutil.copyfile(golden / name, dest / name)
    (dest / "images").mkdir(exist_ok=True)
    for image in (golden / "images").iterdir():
        shutil.copyfile(image, dest / "images" / image.name)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"prepared {dest} ({size / 2**20:.1f} MiB)")


class Budget:
    """The time left for the whole check."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class BusySampler:
    """The GPU's utilisation (NVML, via torch.cuda.utilization) sampled every ``interval_s``."""

    def __init__(self, device, interval_s: float = 0.1) -> None:
        self.device, self.interval_s, self.samples = device, interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # noqa: BLE001 - no NVML: no figure, not no check
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "BusySampler":
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def busy(self) -> float | None:
        return round(statistics.mean(self.samples) / 100.0, 3) if self.samples else None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_environment(device) -> dict:
    import numpy as np
    import torch
    import torchvision

    import img2pose_core
    from img2pose_core import geometry

    info = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "device": str(device), "cpus": os.cpu_count(),
        "img2pose_core": str(Path(img2pose_core.__file__).parent),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}  # fmt: skip
    from benchmarks.torch_api import listed_names, missing_names

    # Every torch/torchvision name the core uses must exist in this (older) torch.
    info["torch_names_checked"] = len(listed_names())
    info["torch_names_missing"] = missing_names(listed_names())
    if info["torch_names_missing"]:
        raise RuntimeError(f"this torch lacks names img2pose_core uses: {info['torch_names_missing']}")
    # A small piece of the core on the device: a rotation through the float64 geometry.
    rot = geometry.rotvec_to_yaw_pitch_roll(torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64, device=device))
    info["geometry_runs"] = bool(torch.isfinite(rot).all())
    return info


def section_golden(bundle: str, golden: Path, device) -> list[dict]:
    """The golden runs through the predictor (scores, boxes and poses, as test_golden.py checks them)."""
    import numpy as np
    from PIL import Image

    from benchmarks._common import compare_with_golden
    from img2pose_core.predictor import Predictor

    expected = np.load(golden / "detections.npz")
    rows = []
    for run in json.loads((golden / "runs.json").read_text()):
        with Image.open(golden / "images" / run["image"]) as im:
            image = np.asarray(im.convert("RGB"))
        p = Predictor(bundle, device=device, threshold=0.0, min_size=run["min_size"], max_size=run["max_size"],
                      rpn_pre_nms_top_n=6000, rpn_post_nms_top_n=1000)  # fmt: skip
        faces = p.predict([image])[0]
        rows.append(compare_with_golden(run["name"], faces.scores, faces.boxes, faces.poses, expected))
    return rows


def section_predictor(bundle: str, frames, device, settings, batches, precisions, compiles, images: int, budget: Budget,
                      reps: int = 3) -> list[dict]:
    import torch

    from img2pose_core.predictor import Predictor

    rows = []
    for compile_ in compiles:
        for lo, hi in settings:
            for precision in precisions:
                for bs in batches:
                    if budget.left() < 20:
                        rows.append(not_measured(f"time budget spent ({max(budget.left(), 0):.0f} s left of {budget.seconds:.0f} s)",
                                                 min_size=lo, max_size=hi, precision=precision, batch=bs,
                                                 compile=compile_))  # fmt: skip
                        print(f"  {lo}/{hi} {precision} batch {bs} compile {compile_}: not measured: {rows[-1]['skipped']}",
                              flush=True)  # fmt: skip
                        continue
                    n = max(images, bs)
                    batch = [frames[i % len(frames)] for i in range(n)]
                    p = Predictor(bundle, device=device, min_size=lo, max_size=hi, threshold=0.8, batch_size=bs,
                                  precision=precision, compile=compile_)  # fmt: skip
                    t0 = time.perf_counter()
                    first = p.predict(batch[:bs])  # warm-up (and compilation)
                    _sync(device)
                    warm = time.perf_counter() - t0
                    same = None
                    if compile_ not in (False, "off"):
                        # The compiled graph against the eager model, same inputs and precision.
                        eager = Predictor(bundle, device=device, min_size=lo, max_size=hi, threshold=0.8,
                                          batch_size=bs, precision=precision).predict(batch[:bs])  # fmt: skip
                        same = _same_faces(first, eager)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times = []
                    for _ in range(reps):  # the median of reps timed passes
                        _sync(device)
                        start = time.perf_counter()
                        p.predict(batch, batch_size=bs)
                        _sync(device)
                        times.append(time.perf_counter() - start)
                    med = statistics.median(times)
                    rows.append({
                        "min_size": lo, "max_size": hi, "precision": p.precision, "asked": precision, "batch": bs,
                        "compile": compile_, "images": n, "images_per_s": round(n / med, 2),
                        "ms_per_image": round(1000 * med / n, 2), "warmup_s": round(warm, 2), "vs_eager": same,
                        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
                    })  # fmt: skip
                    print(f"  {lo}/{hi} {precision} batch {bs} compile {compile_}: {rows[-1]['images_per_s']} images/s",
                          flush=True)  # fmt: skip
    return rows


def _same_faces(got, want) -> dict:
    """Face counts and the largest score and box differences of two predictions of the same images."""
    import numpy as np

    counts = [(len(g.scores), len(w.scores)) for g, w in zip(got, want)]
    paired = [(g, w) for g, w in zip(got, want) if len(g.scores) == len(w.scores)]
    score = max((float(np.abs(g.scores - w.scores).max()) for g, w in paired if len(g.scores)), default=0.0)
    box = max((float(np.abs(g.boxes - w.boxes).max()) for g, w in paired if len(g.scores)), default=0.0)
    return {"same_counts": all(a == b for a, b in counts), "max_score_diff": score, "max_box_diff_px": box}


def section_precision(bundle: str, device, lo: int, hi: int) -> list[dict]:
    from benchmarks.speed import precision_error

    return precision_error(bundle, device, min_size=lo, max_size=hi)


def _jpegs(golden: Path, n: int, size=(1280, 720)) -> list[bytes]:
    from benchmarks.speed import make_frames
    from PIL import Image

    frames = make_frames(min(n, 32), golden, size)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(frames[i % len(frames)]).save(buf, format="JPEG", quality=85 + i % 10)
        out.append(buf.getvalue())
    return out


def section_pipeline(bundle: str, golden: Path, device, images: int, batch: int, lo: int, hi: int, precision: str) -> list[dict]:
    """The job's shape without Ray: decode (CPU threads, or the GPU) -> predictor in batches -> rows."""
    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    from img2pose_core.imageio import decode_image
    from img2pose_core.predictor import Predictor

    data = _jpegs(golden, images)
    p = Predictor(bundle, device=device, min_size=lo, max_size=hi, threshold=0.8, batch_size=batch, precision=precision)
    p.predict([decode_image(data[0]).pixels])  # warm-up
    rows = []

    def cpu_decoded():
        """Decoded arrays in input order, by as many threads as the machine has cores, a few batches ahead."""
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            ahead: queue.Queue = queue.Queue()
            for chunk in range(0, len(data), batch):
                ahead.put(pool.map(lambda b: decode_image(b).pixels, data[chunk : chunk + batch]))
                if ahead.qsize() > 4:
                    yield list(ahead.get())
            while not ahead.empty():
                yield list(ahead.get())

    def gpu_decoded():
        import warnings

        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's notice about TorchCodec
        for chunk in range(0, len(data), batch):
            tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data[chunk : chunk + batch]]
            yield decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    for way, source in (("cpu decode (threads)", cpu_decoded), (f"{device.type} decode_jpeg, batched", gpu_decoded)):
        faces = 0
        _sync(device)
        with BusySampler(device) as busy:
            start = time.perf_counter()
            for decoded in source():
                faces += sum(len(f) for f in p.predict(decoded))
            _sync(device)
            seconds = time.perf_counter() - start
        rows.append({"way": way, "images": len(data), "images_per_s": round(len(data) / seconds, 2),
                     "gpu_busy": busy.busy(), "faces": faces, "torchvision": torchvision.__version__})  # fmt: skip
        print(f"  {way}: {rows[-1]['images_per_s']} images/s, GPU busy {rows[-1]['gpu_busy']}", flush=True)
    return rows


def _markdown(results: dict) -> str:
    env = results["sections"].get("environment", {}).get("result", {})
    lines = [f"# gpu_check on {env.get('gpu', env.get('device', '?'))}", "",
             f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, Python {env.get('python')}, "
             f"{env.get('cpus')} CPUs; {results['wall_s']:.0f} s in all.", ""]  # fmt: skip
    for name, section in results["sections"].items():
        lines.append(f"## {name} ({section['seconds']:.1f} s)")
        if "error" in section:
            lines += ["", f"**failed**: `{section['error']}`", ""]
            continue
        rows = section["result"]
        if isinstance(rows, dict):
            lines += [""] + [f"- {k}: {v}" for k, v in rows.items()] + [""]
            continue
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
            lines += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
        lines.append("")
    verdict = results["golden_ok"]
    lines.append(f"golden on the device: {'PASS' if verdict else 'FAIL' if verdict is False else 'not run'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda or cpu")
    ap.add_argument("--quick", action="store_true", help="every section, small: for CPU checks and CI")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / ".gpu_check" / "out"))
    ap.add_argument("--golden", default=None, help="golden folder (default: $IMG2POSE_GOLDEN, .gpu_check/golden, ../shared/golden)")
    ap.add_argument("--budget-s", type=float, default=None, help="time for everything (default 450; 240 with --quick)")
    ap.add_argument("--prepare", metavar="DEST", default=None, help="only copy what the check needs of the golden folder to DEST")
    args = ap.parse_args(argv)
    golden = Path(args.golden or os.environ.get("IMG2POSE_GOLDEN") or (ROOT / ".gpu_check" / "golden"))
    if not (golden / "make_checkpoint.py").is_file():
        golden = ROOT.parent / "shared" / "golden"
    if args.prepare:
        prepare(golden, Path(args.prepare))
        return 0
    os.environ["IMG2POSE_GOLDEN"] = str(golden)

    from benchmarks._common import bundle_from_golden
    from benchmarks.speed import make_frames
    from img2pose_core.predictor import resolve_device

    device = resolve_device(args.device)
    budget = Budget(args.budget_s if args.budget_s is not None else (240 if args.quick else 450))
    if args.quick:
        settings, batches, precisions, images, reps = [(128, 256)], [1, 2], ["fp32", "bf16"], 2, 1
        compiles = ["max-autotune"]  # the fixed-size mode; on CPU no CUDA graph, the same compiler otherwise
        pipe = {"images": 8, "batch": 4, "lo": 128, "hi": 256}
    else:
        settings, batches, precisions = [(640, 1400), (400, 1400)], [1, 8, 16, 32], ["fp32", "bf16", "fp16"]
        compiles, images, reps = ["reduce-overhead", "max-autotune", "dynamic"], 64, 3
        pipe = {"images": 2000, "batch": 16, "lo": 640, "hi": 1400}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"args": vars(args), "sections": {}, "golden_ok": None}

    def run(name: str, fn) -> None:
        t0 = time.perf_counter()
        print(f"\n== {name}", flush=True)
        try:
            results["sections"][name] = {"result": fn()}
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        results["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))  # kept if a later step dies

    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(bundle_from_golden(Path(tmp) / "bundle", golden))
        run("environment", lambda: section_environment(device))
        run("golden", lambda: section_golden(bundle, golden, device))
        golden_rows = results["sections"]["golden"].get("result") or []
        results["golden_ok"] = bool(golden_rows) and all(r["ok"] for r in golden_rows)
        frames = make_frames(8, golden)

        run("predictor", lambda: section_predictor(bundle, frames, device, settings, batches, precisions, [False],
                                                   images, budget, reps))  # fmt: skip
        run("precision", lambda: section_precision(bundle, device, *((128, 256) if args.quick else (400, 1400))))
        run("pipeline", lambda: section_pipeline(bundle, golden, device, pipe["images"], pipe["batch"], pipe["lo"],
                                                 pipe["hi"], "fp32"))  # fmt: skip
        if compiles:
            # Last, and only at the first setting's largest batch: each compilation costs tens of seconds,
            # and what the budget leaves for it must not come out of the other sections.
            run("compiled", lambda: section_predictor(bundle, frames, device, settings[:1], batches[-1:], precisions,
                                                      compiles, images, budget, reps))  # fmt: skip
    results["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    md = _markdown(results)
    (out / "gpu_check.md").write_text(md)
    print("\n" + md, flush=True)
    failed = [n for n, s in results["sections"].items() if "error" in s]
    return 1 if failed or results["golden_ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmark scripts: the machine, timing, the golden model and images, tables.

The golden reference data lives in ``../shared/golden`` beside the repository (override with the
``IMG2POSE_GOLDEN`` environment variable, as the tests do). The benchmark model is built straight
from its parts (``Img2Pose`` + the deterministic checkpoint of ``make_checkpoint.py``), so the
benchmarks depend on nothing but the model code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_IMAGES = ("teaser.jpg", "astronaut.jpg", "noise_333x517.png")

__all__ = [
    "ROOT",
    "GOLDEN_IMAGES",
    "golden_dir",
    "golden_checkpoint_state",
    "build_golden_model",
    "load_golden_images",
    "resolve_device",
    "synchronize",
    "Timing",
    "time_runs",
    "machine_info",
    "bundle_from_golden",
    "machine_header",
    "format_table",
    "write_json",
    "undo_tie_swaps",
    "compare_with_golden",
]


# --------------------------------------------------------------------------- golden data and model


def golden_dir() -> Path:
    """``../shared/golden`` relative to the repository root (or ``$IMG2POSE_GOLDEN``); exits if absent."""
    path = Path(os.environ.get("IMG2POSE_GOLDEN", ROOT.parent / "shared" / "golden"))
    if not (path / "make_checkpoint.py").is_file():
        raise SystemExit(f"golden reference data not found at {path} (set IMG2POSE_GOLDEN)")
    return path


def _make_checkpoint_module(golden: Path):
    spec = importlib.util.spec_from_file_location("golden_make_checkpoint", golden / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def golden_checkpoint_state(checkpoint: str | Path | None = None) -> dict[str, Tensor]:
    """The golden weights as read by :func:`img2pose_core.checkpoint.read_state_dict`.

    Without ``checkpoint`` the file is written by the golden ``make_checkpoint`` into a temporary
    directory (removed afterwards), so the released-layout loading path is the one exercised.
    """
    from img2pose_core.checkpoint import read_state_dict

    if checkpoint is not None:
        return read_state_dict(checkpoint)
    module = _make_checkpoint_module(golden_dir())
    with tempfile.TemporaryDirectory(prefix="img2pose-bench-") as tmp:
        path = Path(tmp) / "img2pose_golden.pth"
        torch.save({"fpn_model": module.make_state_dict()}, path)
        return read_state_dict(path)


def bundle_from_golden(out: str | Path, golden: Path | None = None, weights: str | Path | None = None) -> Path:
    """A bundle at ``out`` of the golden weights, pose statistics and 3D reference points.

    ``weights`` defaults to a checkpoint written by the golden ``make_checkpoint.py`` (in the released
    layout) next to ``out``.
    """
    from img2pose_core.bundle import create_bundle

    golden = golden or golden_dir()
    out = Path(out)
    if weights is None:
        weights = out.parent / f"{out.name}-img2pose_v1.pth"
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"fpn_model": _make_checkpoint_module(golden).make_state_dict()}, weights)
    return create_bundle(
        weights=weights, pose_mean=golden / "pose_mean.npy", pose_stddev=golden / "pose_stddev.npy",
        points_68=golden / "reference_3d_68_points_trans.npy", points_5=golden / "reference_3d_5_points_trans.npy",
        out=out,
    )  # fmt: skip


def build_golden_model(device: torch.device | str = "cpu", checkpoint: str | Path | None = None, **settings):
    """``Img2Pose`` with the golden weights, pose statistics and 68 points, in eval mode on ``device``.

    ``settings`` are :class:`img2pose_core.model.ModelSettings` fields (``min_size``, ``max_size``,
    ``rpn_pre_nms_top_n`` ...), applied with ``configure``.
    """
    from img2pose_core.checkpoint import load_weights
    from img2pose_core.model import Img2Pose

    golden = golden_dir()
    pose_mean = torch.from_numpy(np.load(golden / "pose_mean.npy"))
    pose_stddev = torch.from_numpy(np.load(golden / "pose_stddev.npy"))
    points_68 = torch.from_numpy(np.load(golden / "reference_3d_68_points_trans.npy"))
    model = Img2Pose(pose_mean, pose_stddev, points_68)
    load_weights(model, golden_checkpoint_state(checkpoint), str(checkpoint or "golden make_checkpoint.py"))
    if settings:
        model.configure(**settings)
    return model.to(device).eval()


def load_golden_images(names: Sequence[str] = GOLDEN_IMAGES) -> list[tuple[str, Tensor]]:
    """``(name, image)`` pairs, images as float RGB ``(3, H, W)`` in [0, 1] (what the model takes)."""
    from PIL import Image

    out = []
    for name in names:
        with Image.open(golden_dir() / "images" / name) as im:
            arr = np.asarray(im.convert("RGB"))
        out.append((name, torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)))
    return out


# --------------------------------------------------------------------------- devices and timing


def resolve_device(name: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA request without a GPU exits."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA GPU is available")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA) so that the next clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds of each timed run (warm-up excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min(self) -> float:
        return min(self.times) if self.times else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "times_s": self.times}


def time_runs(
    fn: Callable[[], Any], runs: int, warmup: int = 1, device: torch.device | str = "cpu"
) -> tuple[Timing, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed with ``time.perf_counter``.

    On CUDA the device is synchronised before each clock reading. Returns the timing and the last result.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    timing = Timing()
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        timing.times.append(time.perf_counter() - start)
    return timing, result


# --------------------------------------------------------------------------- reporting


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What the figures were measured on (CPU, cores, threads, library versions, device)."""
    import torchvision

    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_1min": _load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_header(info: dict[str, Any]) -> str:
    """Two lines describing the machine, for the top of a benchmark's output."""
    dev = info["device"] + (f" ({info['gpu']})" if "gpu" in info else "")
    return (
        f"machine: {info['cpu']} ({info['cpu_count']} cores), torch threads {info['torch_threads']}, device {dev}, "
        f"load average {info.get('load_average_1min')} at start (other work skews timings)\n"
        f"versions: torch {info['torch']}, torchvision {info['torchvision']}, python {info['python']}"
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


# --------------------------------------------------------------------------- golden detections


def undo_tie_swaps(exp_scores: np.ndarray, exp_boxes: np.ndarray, boxes: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """An order of the actual detections that undoes swaps among tied scores (the golden README:
    "in the same order (ties in score may swap)"): within each run of golden scores no further apart
    than ``tol``, each golden detection takes the actual one whose box is nearest."""
    order = np.arange(len(boxes))
    start = 0
    while start < len(exp_scores):
        stop = start + 1
        while stop < len(exp_scores) and abs(exp_scores[stop - 1] - exp_scores[stop]) <= tol:
            stop += 1
        free = list(range(start, min(stop, len(boxes))))
        for i in range(start, min(stop, len(boxes))):
            best = min(free, key=lambda j: np.abs(np.asarray(boxes[j]) - exp_boxes[i]).max())
            order[i] = best
            free.remove(best)
        start = stop
    return order


def compare_with_golden(name: str, scores, boxes, dofs, expected) -> dict:
    """Detections of golden run ``name`` against ``detections.npz``, with the golden README's tolerances
    (scores 1e-4, boxes 1 px, dofs 1e-3, same count, ties may swap): ``{"ok", "count", ...max diffs}``."""
    exp_scores, exp_boxes, exp_dofs = (np.asarray(expected[f"{name}/{k}"]) for k in ("scores", "boxes", "dofs"))
    scores, boxes, dofs = np.asarray(scores), np.asarray(boxes), np.asarray(dofs)
    out = {"run": name, "count": len(scores), "golden_count": len(exp_scores)}
    if len(scores) != len(exp_scores):
        return {**out, "ok": False, "max_d_score": None, "max_d_box_px": None, "max_d_dof": None}
    order = undo_tie_swaps(exp_scores, exp_boxes, boxes)
    d_score = float(np.abs(scores[order] - exp_scores).max(initial=0.0))
    d_box = float(np.abs(boxes[order] - exp_boxes).max(initial=0.0))
    d_dof = float(np.abs(dofs[order] - exp_dofs).max(initial=0.0))
    ok = d_score <= 1e-4 and d_box <= 1.0 and d_dof <= 1e-3
    return {**out, "ok": ok, "max_d_score": d_score, "max_d_box_px": d_box, "max_d_dof": d_dof}

"""benchmarks/gpu_check.sh, the one prepared command of the device machine, run here on the CPU with
--quick: every section runs, so the first run on a GPU is not the script's first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, needs_golden

pytestmark = [needs_golden]


def _measured_or_not(row: dict) -> bool:
    """A predictor row either has its figure, or has none and says why: True when it was measured."""
    if row.get("skipped") is not None:
        assert isinstance(row["skipped"], str) and row["skipped"], row
        assert row["images_per_s"] is None and row["ms_per_image"] is None and row["vs_eager"] is None, row
        return False
    assert row["images_per_s"] > 0 and row["ms_per_image"] > 0, row
    return True


def test_gpu_check_runs_every_section_on_cpu(golden_dir, tmp_path):
    # A budget no machine spends: every setting is measured, however slow the machine (the rows of a
    # spent budget are checked by test_a_setting_the_budget_leaves_no_time_for_is_reported_not_measured).
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, IMG2POSE_GOLDEN=str(golden_dir))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--budget-s", "86400"],
                          env=env, capture_output=True, text=True, timeout=800)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    sections = results["sections"]
    assert set(sections) == {"environment", "golden", "predictor", "precision", "pipeline", "compiled"}
    assert not [name for name, s in sections.items() if "error" in s], sections
    assert results["golden_ok"] is True and len(sections["golden"]["result"]) == 4
    rows = sections["predictor"]["result"] + sections["compiled"]["result"]
    assert all(_measured_or_not(r) for r in rows), [r for r in rows if r.get("skipped")]
    assert {r["compile"] for r in rows} == {False, "max-autotune"}
    # The fixed-size compiled graph gives the eager model's faces (on CPU: the same compiler as on GPU,
    # without the CUDA graph).
    for row in sections["compiled"]["result"]:
        same = row["vs_eager"]
        assert same["same_counts"] and same["max_score_diff"] < 1e-4 and same["max_box_diff_px"] < 0.05, row
    assert {r["way"].split()[0] for r in sections["pipeline"]["result"]} == {"cpu"}
    assert len({r["faces"] for r in sections["pipeline"]["result"]}) == 1, "both decoders must give the same faces"
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "golden on the device: PASS" in md and md in proc.stdout
    assert "not measured" not in md


def test_a_setting_the_budget_leaves_no_time_for_is_reported_not_measured():
    """A spent budget: each predictor row has no figure (null, not absent), says why, and the Markdown
    prints "not measured: <why>" where the figure would be; a measured row beside it keeps its figure."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.gpu_check import Budget, _markdown, section_predictor

    rows = section_predictor("no bundle is opened", [], torch.device("cpu"), [(128, 256)], [1, 2], ["fp32"],
                             [False, "max-autotune"], 2, Budget(0))  # fmt: skip
    assert len(rows) == 4 and not any(_measured_or_not(r) for r in rows)
    assert all(r["skipped"].startswith("time budget spent") for r in rows)
    assert {(r["batch"], r["compile"]) for r in rows} == {(1, False), (2, False), (1, "max-autotune"), (2, "max-autotune")}
    measured = {"min_size": 128, "max_size": 256, "precision": "fp32", "batch": 4, "compile": False, "images": 4,
                "images_per_s": 12.5, "ms_per_image": 80.0, "warmup_s": 1.0, "vs_eager": None, "peak_gpu_mib": None}
    assert _measured_or_not(measured)
    results = {"sections": {"predictor": {"result": [measured, *rows], "seconds": 0.0}}, "golden_ok": None, "wall_s": 1.0}
    json.loads(json.dumps(results))  # as gpu_check.json holds it
    table = [line for line in _markdown(results).splitlines() if line.startswith("| ") and "| --- |" not in line]
    header, cells = table[0].split(" | "), [line.split(" | ") for line in table[1:]]
    col = header.index("images_per_s")
    assert cells[0][col] == "12.5"
    assert all(c[col].startswith("not measured: time budget spent") for c in cells[1:]), table


def test_gpu_check_prepares_what_travels(golden_dir, tmp_path):
    dest = tmp_path / "golden"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--golden", str(golden_dir),
                           "--prepare", str(dest)], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert (dest / "make_checkpoint.py").is_file() and (dest / "detections.npz").is_file()
    assert size < 16 * 2**20, f"{size} bytes would eat the 64 MiB that may travel"
    assert Path(ROOT / ".gitignore").read_text().count(".gpu_check/") == 1


def test_the_core_uses_only_torch_names_listed_for_the_oldest_supported_torch():
    """benchmarks/torch_api.txt is what gpu_check.py resolves on the device machine's torch 2.11: a name
    the core starts using must be added there, so that the next device run checks it."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.torch_api import listed_names, missing_names, used_names

    used = used_names()
    assert "torch.cuda.Stream" in used and "torchvision.ops.batched_nms" in used  # the scan sees imports and chains
    assert not sorted(used - listed_names()), "add these to benchmarks/torch_api.txt"
    assert missing_names(listed_names()) == []  # every listed name resolves in this torch
    assert missing_names({"torch.no_such_function"}) == ["torch.no_such_function"]

"""Shared fixtures: the golden reference data, a checkpoint built from it, and a bundle of both."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ (reference variants) and jobs/ import from the root
GOLDEN = Path(os.environ.get("IMG2POSE_GOLDEN", ROOT.parent / "shared" / "golden"))

needs_golden = pytest.mark.skipif(
    not (GOLDEN / "make_checkpoint.py").is_file(),
    reason=f"the golden reference data ({GOLDEN}) is absent",
)


def _make_checkpoint_module():
    spec = importlib.util.spec_from_file_location("golden_make_checkpoint", GOLDEN / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "make_checkpoint.py").is_file():
        pytest.skip(f"the golden reference data ({GOLDEN}) is absent")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_checkpoint(golden_dir, tmp_path_factory) -> Path:
    """The deterministic img2pose checkpoint, written by the golden ``make_checkpoint.py``."""
    import torch

    out = tmp_path_factory.mktemp("ckpt") / "img2pose_v1.pth"
    torch.save({"fpn_model": _make_checkpoint_module().make_state_dict()}, out)
    return out


@pytest.fixture(scope="session")
def golden_bundle(golden_dir, golden_checkpoint, tmp_path_factory) -> Path:
    """A bundle of the golden checkpoint, pose statistics and 3D reference points."""
    from benchmarks._common import bundle_from_golden

    return bundle_from_golden(tmp_path_factory.mktemp("bundle") / "golden", golden_dir, weights=golden_checkpoint)


@pytest.fixture(scope="session")
def bundle_05(golden_checkpoint, golden_dir, tmp_path_factory) -> Path:
    """A bundle made with ``img2pose bundle create --threshold 0.5`` (the golden weights and arrays)."""
    from img2pose_core import cli

    out = tmp_path_factory.mktemp("bundle05") / "b"
    rc = cli.main([
        "bundle", "create", "--weights", str(golden_checkpoint), "--pose-mean", str(golden_dir / "pose_mean.npy"),
        "--pose-stddev", str(golden_dir / "pose_stddev.npy"),
        "--points-68", str(golden_dir / "reference_3d_68_points_trans.npy"),
        "--points-5", str(golden_dir / "reference_3d_5_points_trans.npy"), "--out", str(out), "--threshold", "0.5",
    ])  # fmt: skip
    assert rc == 0
    return out


# --- the temp folder -----------------------------------------------------------------------------------
# The suite's processes (this one, the jobs it starts, the test Ray cluster's workers) get a temp folder
# of their own, with the model caches beside it; at the end what is still in it is reported and all of it
# removed. pytest's own folders (tmp_path, tmp_path_factory) stay where they are: see
# tmp_path_retention_policy in pyproject.toml.
# Names the project's code gives its temp files and folders (jobs/, img2pose_core/, benchmarks/, tests/):
# one of them left behind is a leak, not something Ray or a library keeps.
PROJECT_TEMP_NAMES = re.compile(r"^(\.?img2pose-|skipbench-|relsec-|bad-\d+$)")
_left_in_temp: list[tuple[str, int]] = []


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


@pytest.fixture(scope="session", autouse=True)
def suite_temp_folder(tmp_path_factory) -> Path:
    """``$TMPDIR`` (and ``tempfile.gettempdir()``) of the whole session: a folder of its own, so that
    what the suite leaves there is known to be the suite's (nothing of other processes on the machine),
    and removed at the end. ``IMG2POSE_CACHE`` (bundles shipped to Ray workers) and torch's compile cache
    go beside it instead of ``~/.cache/img2pose`` and ``/tmp/torchinductor_$USER``."""
    tmp_path_factory.getbasetemp()  # pytest's base folder is chosen before $TMPDIR changes
    root = Path(tempfile.mkdtemp(prefix="i2pt-"))  # short: Ray's sockets live under $TMPDIR/ray/session_*/
    tmp, cache, inductor = root / "tmp", root / "cache", root / "inductor"
    for folder in (tmp, cache, inductor):
        folder.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(tmp))
    mp.setattr(tempfile, "tempdir", str(tmp))
    mp.setenv("IMG2POSE_CACHE", str(cache))
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
    try:
        yield tmp
    finally:
        mp.undo()
        # pymp-*: multiprocessing's folder of this very process, which removes it at exit.
        _left_in_temp.extend((e.name, _size(e)) for e in sorted(tmp.iterdir()) if not e.name.startswith("pymp-"))
        _left_in_temp.extend((f"({folder.name})", _size(folder)) for folder in (cache, inductor) if any(folder.iterdir()))
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What the suite's processes left in their temp folder (removed since): the project's own files
    there are leaks to fix (a run killed with SIGKILL cannot remove its console log, img2pose-run-*.log)."""
    if not _left_in_temp:
        return
    ours = [(n, s) for n, s in _left_in_temp if PROJECT_TEMP_NAMES.match(n)]
    terminalreporter.section("left in the temp folder, and the caches in brackets (all removed at the end of the session)")
    for name, size in _left_in_temp:
        mark = "  <- the project's" if (name, size) in ours else ""
        terminalreporter.write_line(f"{size / 2**20:10.1f} MiB  {name}{mark}")
    terminalreporter.write_line(f"{len(ours)} of the project's own, {sum(s for _, s in _left_in_temp) / 2**20:.1f} MiB in all")

"""Progress in images: the line's content, when lines are written, and a real run's console output."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.progress import Counts, ProgressDisplay, batch_counts, format_progress
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_batch_counts_split_statuses():
    got = batch_counts(["ok", "ok", "corrupt", "duplicate", "skipped", "too_small"], faces=7)
    assert got == {"ok": 2, "failed": 2, "counted": 1, "faces": 7, "skipped": 1}


def test_line_shows_images_rate_and_eta():
    line = format_progress(Counts(ok=40, failed=10, faces=120), elapsed_s=25.0, total=200)
    assert line.startswith("50/200 images (25%)") and "ok 40" in line and "failed 10" in line
    assert "faces 120" in line and "2.00 images/s" in line and "ETA 1 min 15 s" in line
    unknown = format_progress(Counts(ok=3), elapsed_s=1.5, total=None)
    assert unknown.startswith("3 images |") and "ETA" not in unknown
    bar = format_progress(Counts(ok=100), elapsed_s=10, total=200, bar_width=10)
    assert bar.startswith("[#####.....] 100/200")
    assert "not images 4" in format_progress(Counts(ok=1, counted=4), 1.0, None)
    # Inputs done by an earlier run are said to be so, not counted as "not images".
    resumed = format_progress(Counts(ok=1, skipped=200), 1.0, None)
    assert "skipped 200 (done before)" in resumed and "not images" not in resumed


def test_log_lines_only_when_counts_change():
    counts = {"ok": 0, "failed": 0, "counted": 0, "faces": 0}
    out = io.StringIO()
    display = ProgressDisplay(lambda: dict(counts), total=10, interval_s=3600, stream=out)
    display._started = 0.0
    display.show()
    display.show()  # unchanged: no new line
    counts["ok"] = 5
    display.show()
    display.show(final=True)  # unchanged again: the last line already says it
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[annotate] 5/10 images")
    unreadable = ProgressDisplay(lambda: None, stream=io.StringIO())
    unreadable.show(final=True)  # a lost counter writes nothing and raises nothing
    assert unreadable.stream.getvalue() == ""


def test_terminal_shows_a_live_bar():
    counts = {"ok": 2, "failed": 1, "counted": 0, "faces": 3, "skipped": 0}
    out = io.StringIO()
    display = ProgressDisplay(lambda: dict(counts), total=4, stream=out, interactive=True, interval_s=3600).start()
    display.show()
    counts["ok"] = 3
    display.stop()
    text = out.getvalue()
    # tqdm redraws one line in place ("\r"), with the images done of the total, the rate and the counts.
    assert "\r" in text and text.endswith("\n") and text.count("\n") == 1, text
    last = text.rstrip("\n").split("\r")[-1]
    assert "4/4" in last and "images/s" in last and "ok 3, failed 1, faces 3" in last and "100%" in last, last


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("progress_in")
    rng = np.random.default_rng(5)
    for i in range(200):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg", quality=80)
    return folder


def test_a_run_of_200_images_prints_a_handful_of_lines(ray_head, bundle_05, small_images, tmp_path):
    """Also the threshold rule end to end: no --threshold, a bundle storing 0.5, and the manifest's model
    says 0.5 (its arguments None)."""
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    args = ["--input", str(small_images), "--output", str(tmp_path / "out"), "--bundle", str(bundle_05),
            "--min-size", "32", "--max-size", "64", "--progress-interval", "5", "--run-id", "r200"]
    proc = subprocess.run([sys.executable, "-m", "jobs.annotate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    progress = [line for line in err_lines if re.match(r"\[annotate\] \d+/200 images", line)]
    assert progress and progress[-1].startswith("[annotate] 200/200 images (100%) | ok 200 | failed 0")
    # A handful of lines, not a block per 10 s: the run line and the progress lines, nothing of Ray's
    # own (not even the core worker's ERROR about Ray Data's actors, ray-project/ray#57733).
    others = [line for line in err_lines if line not in progress]
    assert len(others) == 1 and others[0].startswith("[annotate] run "), others
    assert len(progress) <= 3 + proc_seconds(proc) // 5, progress
    assert "images   200 (ok 200)" in proc.stdout
    manifest = json.loads((tmp_path / "out" / "runs" / "r200.json").read_text())
    assert manifest["model"]["threshold"] == 0.5 and manifest["arguments"]["threshold"] is None
    # The same counts as Ray metrics on the cluster's Prometheus endpoints (docs/operations.md,
    # "Monitoring"): the model actors' batches, added up by the run's counter actor, whose last counts
    # reach its node's endpoint when the run ends. Scraped where a Prometheus would find them: the targets
    # of the head's service-discovery file.
    from jobs.progress import METRICS
    from ray_metrics import discovery_targets, poll, run_values, scrape

    def counted():
        samples = scrape(discovery_targets(ray_head.temp_dir))
        return samples if run_values(samples, METRICS["images"].exported, "r200", "status") == {"ok": 200} else None

    samples = poll("ray_img2pose_images_total{run_id='r200'} == {ok: 200}", counted, timeout_s=60)
    faces = manifest["counts"]["faces"]
    assert run_values(samples, METRICS["faces"].exported, "r200") == ({None: faces} if faces else {})
    # The console, kept beside the manifest: the run line, the progress lines and the summary; the lease
    # is gone with the run.
    log = (tmp_path / "out" / "runs" / "r200.log").read_text()
    assert others[0] in log and progress[-1] in log and "images   200 (ok 200)" in log
    assert "core_worker.cc" not in log
    assert not list((tmp_path / "out" / "runs").glob("*.lease"))


def proc_seconds(proc: subprocess.CompletedProcess) -> int:
    """The pipeline's seconds from the job's summary (bounds the number of interval lines)."""
    found = re.search(r"pipeline ([\d.]+) s", proc.stdout)
    return int(float(found.group(1))) + 1 if found else 10**6


def test_unreachable_ray_address_fails_at_once(tmp_path, golden_bundle):
    """A RAY_ADDRESS where nothing answers ends the job in seconds with what to do, not minutes of retries."""
    import os
    import time

    from ray_fixtures import free_port

    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((40, 56, 3), dtype=np.uint8)).save(images / "a.jpg")
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{free_port()}", RAY_AUTH_MODE="disabled")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.annotate", "--input", str(images), "--output", str(tmp_path / "out"),
                           "--bundle", str(golden_bundle)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert time.monotonic() - started < 120
    assert proc.returncode == 1 and "annotate.py: error: RAY_ADDRESS=127.0.0.1:" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "unset ray_address" in proc.stderr.lower()
    # A run that fails still leaves its console, error included, beside where its manifest would be,
    # and releases its lease.
    (log,) = (tmp_path / "out" / "runs").glob("*.log")
    assert "annotate.py: error: RAY_ADDRESS=127.0.0.1:" in log.read_text()
    assert not list((tmp_path / "out" / "runs").glob("*.lease"))


def test_stderr_filter_drops_only_lines_that_need_no_action(tmp_path):
    """At the descriptor: C++ writes to fd 2 directly. A child process writes through the filter."""
    code = """
import os, sys
sys.path.insert(0, {root!r})
from jobs.console import ConsoleFilter
with ConsoleFilter():
    os.write(2, b"[2026-12-01 02:45:08,544 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(X)' and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. If the arguments ...\\n")
    os.write(2, b"kept line 1\\n")
    os.write(2, b"\\r[annotate] 5/10 images")  # a redrawn bar: no newline, forwarded at once
    os.write(2, b"\\n[2026 partial C++ line")
    os.write(2, b" ends here\\n")
    sys.stderr.write("python stderr\\n")
print("stdout untouched")
copy = os.open({copy!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
with ConsoleFilter(1, patterns=(), copy_to=copy), ConsoleFilter(2, copy_to=copy):
    print("to stdout", flush=True)
    os.write(2, b"[2026-12-01 02:45:08,544 E 1 1] core_worker.cc:2465: Actor with class name: 'M' and ID: 'ab' has constructor arguments in the object store and max_restarts > 0.\\n")
    os.write(2, b"to stderr\\n")
""".format(root=str(ROOT), copy=str(tmp_path / "copy.log"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"kept line 1\n\r[annotate] 5/10 images\n[2026 partial C++ line ends here\npython stderr\nto stderr\n"
    assert proc.stdout == b"stdout untouched\nto stdout\n"
    # The copy holds both streams as forwarded: the dropped line is in neither.
    assert sorted((tmp_path / "copy.log").read_bytes().splitlines()) == [b"to stderr", b"to stdout"]


def _run_in_a_terminal(cmd: list[str], env: dict, timeout_s: float = 600) -> tuple[int, str]:
    """Run ``cmd`` with stdin, stdout and stderr on a real pseudo-terminal (120 columns), as in tmux;
    returns its exit code and everything it wrote."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # a full terminal buffer would block the job
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=30)
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_the_job_shows_a_live_bar_in_a_terminal(ray_head, bundle_05, small_images, tmp_path):
    """In a terminal (a real pty, not a flag): a tqdm bar redrawn in place, with images done of the total,
    images/s and the counts; no log lines of the 30-s form."""
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"), TERM="xterm")
    files = sorted(small_images.iterdir())[:24]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in files:
        (inputs / f.name).write_bytes(f.read_bytes())
    code, text = _run_in_a_terminal([sys.executable, "-m", "jobs.annotate", "--input", str(inputs), "--output",
                                     str(tmp_path / "out"), "--bundle", str(bundle_05), "--min-size", "32",
                                     "--max-size", "64", "--run-id", "tty"], env)  # fmt: skip
    assert code == 0, text[-4000:]
    redraws = [part for part in re.split(r"[\r\n]", text) if "images/s" in part and "[annotate]" in part]
    assert redraws, text[-4000:]
    assert any("24/24" in part and "100%" in part and "ok 24, failed 0" in part for part in redraws), redraws[-3:]
    assert "\r" in text  # redrawn in place
    assert not re.search(r"\[annotate\] \d+/24 images \(\d+%\) \|", text), "the log form was written to a terminal"
    assert "images   24 (ok 24)" in text  # the summary follows the bar

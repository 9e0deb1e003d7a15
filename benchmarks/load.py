"""Load test of the annotation job: thousands of small images through jobs/annotate.py on this machine,
every image accounted for, memory bounded.

    python -m benchmarks.load [--images 5000] [--size 64x48] [--workdir DIR] [--bundle B] [--json FILE]

Writes ``--images`` JPEGs (crops of the golden photographs resized to ``--size``) in folders of 1000,
so that the job lists them in parallel tasks; builds a bundle of the golden checkpoint unless
``--bundle`` is given; then runs the job once as a subprocess, on a fresh local Ray cluster of its
own (``RAY_ADDRESS`` is removed from its environment), at min/max size 32/64 and threshold 0.5, so
that the model is fast and the pipeline around it is what is measured.

While the job runs, the memory of its process tree (driver, GCS, raylet, dashboard, workers) is
sampled from /proc every 0.5 s: the sum of RSS (an upper bound: shared pages, such as the object
store's, count in every process that touches them) and the sum of PSS (shared pages divided among
their processes: the machine's real share), for all processes and for the Ray workers alone.

Then the output is checked: one ``images`` row per generated image and no other, no duplicate, and
``faces`` rows matching ``num_faces``. Prints images, statuses, faces, the job's images/s (its own
timing, from the run manifest) and the wall time including cluster start, and peak memory.
Exit status 1 if any check fails. The figures of a run on the development machine are in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import ROOT, bundle_from_golden, golden_dir, machine_header, machine_info, write_json

GIB = 1 << 30


def make_corpus(folder: Path, n: int, size: tuple[int, int], per_folder: int = 1000) -> list[str]:
    """``n`` JPEGs of ``size``, each a different crop of a golden photograph; returns their paths."""
    rng = np.random.default_rng(0)
    sources = [Image.open(golden_dir() / "images" / name).convert("RGB") for name in ("teaser.jpg", "astronaut.jpg")]
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = src.crop((x, y, x + side, y + int(side * size[1] / size[0])))
        sub = folder / f"{i // per_folder:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:06d}.jpg"
        crop.resize(size).save(path, quality=85)
        paths.append(str(path))
    return paths


def _memory(pid: int) -> tuple[int, int, str]:
    """(rss, pss, command line) of ``pid`` from /proc; pss falls back to rss where smaps_rollup is missing."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        with open(f"/proc/{pid}/statm") as f:
            rss = pss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, pss, cmd


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class Sampler(threading.Thread):
    """Peak memory of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = {"rss_all": 0, "pss_all": 0, "rss_workers": 0, "pss_workers": 0, "rss_largest": 0}
        self.largest = ""
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            totals = dict.fromkeys(self.peak, 0)
            for pid in _tree(self.root):
                try:
                    rss, pss, cmd = _memory(pid)
                except OSError:
                    continue
                totals["rss_all"] += rss
                totals["pss_all"] += pss
                if cmd.startswith("ray::"):
                    totals["rss_workers"] += rss
                    totals["pss_workers"] += pss
                if rss > self.peak["rss_largest"]:
                    self.peak["rss_largest"], self.largest = rss, cmd.split(" ")[0][:80]
            for key in ("rss_all", "pss_all", "rss_workers", "pss_workers"):
                self.peak[key] = max(self.peak[key], totals[key])
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def check_output(out: Path, expected: list[str]) -> tuple[dict, int, list[str]]:
    """Statuses, faces count and the problems found (missing, extra or duplicated rows, faces mismatches)."""
    import duckdb

    con = duckdb.connect()
    images = f"read_parquet('{out}/images/**/*.parquet', hive_partitioning = true)"
    faces = f"read_parquet('{out}/faces/**/*.parquet', hive_partitioning = true)"
    problems = []
    rows = con.execute(f"select image_uri, status from {images}").fetchall()
    got = Counter(u for u, _ in rows)
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    dup = [u for u, c in got.items() if c > 1]
    if missing:
        problems.append(f"{len(missing)} images without a row, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} rows of unknown images, e.g. {sorted(extra)[:3]}")
    if dup:
        problems.append(f"{len(dup)} images with several rows, e.g. {dup[:3]}")
    has_faces = (out / "faces").exists()
    mismatch = con.execute(
        f"""
        select count(*) from (
          select i.image_uri, i.num_faces, count(f.face_index) n from {images} i
          left join {faces if has_faces else "(select null::varchar image_uri, null::int face_index)"} f
            on f.image_uri = i.image_uri
          where i.status = 'ok' group by all having n != i.num_faces)
        """
    ).fetchone()[0]
    if mismatch:
        problems.append(f"{mismatch} images whose faces rows differ from num_faces")
    n_faces = con.execute(f"select count(*) from {faces}").fetchone()[0] if has_faces else 0
    return dict(Counter(s for _, s in rows)), n_faces, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--workdir", type=Path, default=None, help="where the corpus and output go (default: a temporary folder, removed)")
    p.add_argument("--bundle", default=None, help="model bundle (default: one built from the golden checkpoint)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("job_args", nargs="*", help="extra flags for jobs/annotate.py, after --")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="img2pose-load-")
        args.workdir = Path(tmp.name)
    work = args.workdir
    print(machine_header(machine_info("cpu")))
    t = time.perf_counter()
    expected = make_corpus(work / "corpus", args.images, size)
    print(f"corpus: {len(expected)} JPEGs of {size[0]}x{size[1]} in {work / 'corpus'} ({time.perf_counter() - t:.1f} s)")
    bundle = args.bundle or str(bundle_from_golden(work / "bundle"))
    out = work / "out"
    run_id = f"load-{int(time.time())}"
    cmd = [
        sys.executable, "-m", "jobs.annotate", "--input", str(work / "corpus"), "--output", str(out),
        "--bundle", bundle, "--run-id", run_id, "--min-size", "32", "--max-size", "64", "--threshold", "0.5",
        *args.job_args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print("job:", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    with open(work / "job.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        stdout, _ = proc.communicate()
        sampler.stop()
    wall = time.perf_counter() - started
    print(stdout.rstrip())
    if proc.returncode != 0:
        print(f"the job failed with exit code {proc.returncode}; its log: {work / 'job.err'}")
        print((work / "job.err").read_text()[-3000:])
        return 1
    manifest = json.loads((out / "runs" / f"{run_id}.json").read_text())
    statuses, n_faces, problems = check_output(out, expected)
    peak = {k: round(v / GIB, 2) for k, v in sampler.peak.items()}
    figures = {
        "images": len(expected),
        "size": f"{size[0]}x{size[1]}",
        "statuses": statuses,
        "faces": n_faces,
        "job_images_per_s": manifest["images_per_s"],
        "job_duration_s": manifest["duration_s"],
        "wall_s_with_cluster_start": round(wall, 1),
        "peak_gib": peak,
        "largest_process": sampler.largest,
        "memory_samples": sampler.samples,
        "problems": problems,
        "resources": manifest["resources"],
        "model": {k: manifest["model"][k] for k in ("min_size", "max_size", "threshold", "batch_size")},
    }
    print(
        f"\nimages   {len(expected)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})\n"
        f"faces    {n_faces}\n"
        f"speed    {manifest['images_per_s']} images/s (job's own timing, {manifest['duration_s']:.1f} s); "
        f"{len(expected) / wall:.2f} images/s over {wall:.1f} s wall, cluster start included\n"
        f"memory   peak RSS sum {peak['rss_all']} GiB (workers {peak['rss_workers']} GiB), peak PSS sum "
        f"{peak['pss_all']} GiB (workers {peak['pss_workers']} GiB); largest process {peak['rss_largest']} GiB "
        f"({sampler.largest}); {sampler.samples} samples\n"
        f"checks   {'every image has exactly one row; faces rows match num_faces' if not problems else '; '.join(problems)}"
    )
    if args.json:
        write_json(args.json, figures)
    if tmp is not None:
        tmp.cleanup()
    return 1 if problems or statuses.get("ok", 0) != len(expected) else 0


if __name__ == "__main__":
    sys.exit(main())

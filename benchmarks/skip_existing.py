"""The skip step of ``--skip-existing`` at scale: N synthetic input URIs, half of them already done.

No image is read: this measures only how the job finds what is done. Two ways, each in a fresh
process with its own local Ray, side by side:

- ``join`` (the job's way, ``jobs/done.py``): Ray Data reads the done set from the images table's
  Parquet files and hash-joins it onto the inputs; nothing is gathered in one process;
- ``broadcast`` (the way before): the driver reads every done URI, makes a sorted array of 16-byte
  digests and puts it in the object store for every read task.

For each: seconds, the driver's peak resident memory, the largest Ray worker's peak, and the peak
of all Ray workers together (PSS, which splits shared pages fairly), sampled every 0.2 s.

    python -m benchmarks.skip_existing                    # 10 million URIs, half done
    python -m benchmarks.skip_existing --uris 1000000 --json skip.json
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROWS_PER_FILE = 200_000


def _uri(i: int) -> str:
    return f"s3://corpus/images/{i % 997:03d}/{i:010d}.jpg"


def make_done_table(folder: Path, uris: int) -> list[str]:
    """The images table of a run that did every other URI (status ok), in the job's file layout."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = folder / "images" / "20261130T000000Z-bench0"
    run.mkdir(parents=True, exist_ok=True)
    files = []
    done = np.arange(0, uris, 2)
    for k, start in enumerate(range(0, len(done), ROWS_PER_FILE)):
        chunk = done[start : start + ROWS_PER_FILE]
        table = pa.table({"image_uri": pa.array([_uri(int(i)) for i in chunk]), "status": pa.array(["ok"] * len(chunk))})
        path = run / f"part-{k:032x}.parquet"
        pq.write_table(table, path)
        files.append(str(path))
    return files


class PeakSampler:
    """Peak memory of this process (RSS) and of its Ray worker descendants (RSS per worker, PSS in all)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.driver = self.worker = self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read(pid: int) -> tuple[int, str, int, int]:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        pss = 0
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(stat[1]), cmd, int(stat[21]) * os.sysconf("SC_PAGE_SIZE"), pss

    def _sample(self) -> None:
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    procs[int(entry)] = self._read(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in procs.items():
            children.setdefault(ppid, []).append(pid)
        mine, stack = set(), [os.getpid()]
        while stack:
            pid = stack.pop()
            if pid not in mine:
                mine.add(pid)
                stack.extend(children.get(pid, []))
        workers = [procs[p] for p in mine if p in procs and procs[p][1].startswith("ray::")]
        self.driver = max(self.driver, procs.get(os.getpid(), (0, "", 0, 0))[2])
        self.worker = max([self.worker] + [w[2] for w in workers])
        self.workers = max(self.workers, sum(w[3] for w in workers))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _sources(uris: int, blocks: int):
    import pyarrow as pa
    import ray.data

    def make(batch: dict) -> pa.Table:
        ids = batch["id"]
        n = len(ids)
        return pa.table({
            "source_uri": pa.array([_uri(int(i)) for i in ids]), "kind": pa.array(["file"] * n),
            "status": pa.array([""] * n), "error": pa.array([""] * n), "kept": pa.array([""] * n),
        })  # fmt: skip

    return ray.data.range(uris, override_num_blocks=blocks).map_batches(make, batch_format="numpy", batch_size=50_000)


def run_one(mode: str, uris: int, files: list[str], partitions: int) -> dict:
    """One measurement, in this process (called in a fresh subprocess by :func:`main`)."""
    import numpy as np
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             object_store_memory=4 * 1024**3)  # fmt: skip
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    blocks = max(8, uris // 100_000)
    with PeakSampler() as peaks:
        started = time.perf_counter()
        if mode == "join":
            from jobs.done import attach_done, is_done

            joined = attach_done(_sources(uris, blocks), files, None, partitions)

            def count(batch: dict) -> dict:
                return {"done": np.array([sum(1 for m in batch["done_members"] if is_done(m))]),
                        "total": np.array([len(batch["source_uri"])])}  # fmt: skip

            # Counted in the workers, as the job's load stage consumes the rows: the driver gets two numbers.
            sums = joined.map_batches(count, batch_format="numpy").sum(["done", "total"])
            done, total = int(sums["sum(done)"]), int(sums["sum(total)"])
        else:
            import hashlib

            import pyarrow.dataset as pads

            table = pads.dataset(files, format="parquet").to_table(columns=["image_uri"])
            digests = np.unique(np.array([hashlib.blake2b(u.encode(), digest_size=16).digest()
                                          for u in table["image_uri"].to_pylist()], dtype="S16"))  # fmt: skip
            del table
            ref = ray.put(digests)

            def check(batch: dict, digests) -> dict:
                digests = ray.get(digests) if isinstance(digests, ray.ObjectRef) else digests
                keys = np.array([hashlib.blake2b(str(u).encode(), digest_size=16).digest() for u in batch["source_uri"]], dtype="S16")
                pos = np.clip(np.searchsorted(digests, keys), 0, len(digests) - 1)
                return {"done": (digests[pos] == keys).astype(np.int8)}

            ds = _sources(uris, blocks).map_batches(check, fn_kwargs={"digests": ref}, batch_format="numpy", batch_size=50_000)
            sums = ds.map_batches(lambda b: {"done": np.array([int(b["done"].sum())]), "total": np.array([len(b["done"])])},
                                  batch_format="numpy").sum(["done", "total"])  # fmt: skip
            done, total = int(sums["sum(done)"]), int(sums["sum(total)"])
        seconds = time.perf_counter() - started
    ray.shutdown()
    return {"mode": mode, "uris": uris, "done": done, "total": total, "seconds": round(seconds, 2),
            "driver_peak_gib": round(peaks.driver / 1024**3, 3), "largest_worker_peak_gib": round(peaks.worker / 1024**3, 3),
            "all_workers_peak_pss_gib": round(peaks.workers / 1024**3, 3), "partitions": partitions}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uris", type=int, default=10_000_000, help="input URIs (half of them done)")
    p.add_argument("--partitions", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--modes", default="join:4,join:16,broadcast",
        help="which ways to measure; join:P is the join in P partitions (memory per worker ~ URIs / P)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_files", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    partitions = args.partitions or 2 * (os.cpu_count() or 1)
    if args._one:
        files = json.loads(Path(args._files).read_text())
        print(json.dumps(run_one(args._one, args.uris, files, partitions)))
        return 0
    with tempfile.TemporaryDirectory(prefix="skipbench-") as tmp:
        t0 = time.perf_counter()
        files = make_done_table(Path(tmp), args.uris)
        listing = Path(tmp) / "files.json"
        listing.write_text(json.dumps(files))
        print(f"done set: {args.uris // 2:,} URIs in {len(files)} Parquet files, made in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)  # fmt: skip
        results = []
        for spec in args.modes.split(","):
            mode, _, parts = spec.partition(":")
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.skip_existing", "--uris", str(args.uris), "--partitions", parts or str(partitions),
                 "--_one", mode, "--_files", str(listing)], cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["done"] == (args.uris + 1) // 2 and result["total"] == args.uris, result
            results.append(result)
    print(f"{'way':<14} {'URIs':>12} {'seconds':>9} {'driver GiB':>11} {'worker GiB':>11} {'all workers GiB (PSS)':>22}")
    for r in results:
        way = f"join, {r['partitions']} parts" if r["mode"] == "join" else r["mode"]
        print(f"{way:<14} {r['uris']:>12,} {r['seconds']:>9.1f} {r['driver_peak_gib']:>11.2f} "
              f"{r['largest_worker_peak_gib']:>11.2f} {r['all_workers_peak_pss_gib']:>22.2f}")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs; every run found exactly half of the URIs done")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

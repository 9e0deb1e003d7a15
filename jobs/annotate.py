"""Annotate every face of an image corpus with img2pose: Parquet ``faces`` and ``images`` tables.

Locally:      python -m jobs.annotate --input DIR_OR_URL --output DIR_OR_URL [--bundle B]
              (or, where the project is installed: img2pose annotate ...)
On a cluster: ray job submit --runtime-env cluster/runtime_env.yaml -- python -m jobs.annotate ...
              (from the repository root: docs/operations.md)

See ``--help`` for every flag, docs/schema.md for the tables and README.md for examples.
"""

from __future__ import annotations

import argparse
import sys

from img2pose_core.cli.parser import CommandParser
from img2pose_core.flags import COMMON, HelpFormatter, add_model_flags, finite_number, model_flag_error, positive_int
from jobs.config import JobConfig

__all__ = ["build_parser", "parse_args", "main"]


def _concurrency(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX (integers), got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] < 1 or values[1] < values[0]:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return values[0], values[1]


# The shared argparse types (img2pose_core.flags), by the names this module's flags use.
_positive_int = positive_int
_positive_float = finite_number("seconds")
_non_negative_float = finite_number("seconds", zero_allowed=True)
_cpus = finite_number("CPUs")


_BYTE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_size(text: str) -> int:
    """A positive number of bytes: ``1073741824``, ``512M``, ``1G`` (binary multiples; ``KiB``, ``MB`` … too)."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = number[-1:] if number[-1:] in _BYTE_SUFFIXES else ""
    digits = number[: len(number) - len(suffix)].strip()
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes (1073741824, 512M, 1G), got {text!r}")
    return int(digits) * _BYTE_SUFFIXES[suffix]


def _column_names(text: str) -> list[str]:
    from img2pose_core.output import IMAGES_SCHEMA

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct column names separated by commas, got {text!r}")
    taken = [n for n in names if n in IMAGES_SCHEMA.names]
    if taken:
        raise argparse.ArgumentTypeError(f"{', '.join(taken)}: already columns of the images table; rename them in the manifest")
    return names


def _namespace(text: str) -> str:
    if not text or not all(c.isalnum() or c == "_" for c in text):
        raise argparse.ArgumentTypeError(f"expected letters, digits and '_', got {text!r}")
    return text


def _gpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs, got {text!r}") from None
    if value < 0 or (value > 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected 0, a fraction of one GPU, or a whole number, got {value}")
    return value


def build_parser(prog: str = "annotate.py") -> argparse.ArgumentParser:
    """The job's flags: the one definition, also used to check cluster manifests (and by ``img2pose annotate``)."""
    p = CommandParser(
        prog=prog,
        description=(
            "Find every face in a corpus of images with img2pose and write Parquet tables: faces/ (one row "
            "per face: box, 6DoF pose, yaw/pitch/roll, 5 landmarks, alignment), images/ (one row per input "
            "image with its status) and runs/<run_id>.json (the run's manifest). Model settings are the "
            "bundle's unless a flag says otherwise; a new bundle's threshold is 0.8."
        ),
        formatter_class=HelpFormatter,
    )
    io_ = p.add_argument_group("input and output")
    io_.add_argument(
        "--input", action="append", required=True, metavar="URI",
        help="repeatable. A folder or prefix of images (recursive), a glob (s3://b/x/*.jpg), a WebDataset "
        ".tar shard, or a .parquet/.csv manifest with a column of image URLs (see --url-column). Local "
        "paths, s3://, gs://, https:// or any fsspec URL",
    )  # fmt: skip
    io_.add_argument("--url-column", default="url", help="column of image URLs in manifest inputs")
    io_.add_argument(
        "--allow-local-files", action="store_true",
        help="let manifest rows name files of the worker's own disk (absolute paths, file://, relative paths "
        "that leave the manifest's folder); refused by default, each such row gets status not_allowed",
    )  # fmt: skip
    io_.add_argument(
        "--read-timeout", type=_positive_float, default=180.0, metavar="SECONDS",
        help="the most time one input (an image or a tar shard) may take to read, retries included; a "
        "slower one gets status unreadable and the others of its batch go on",
    )  # fmt: skip
    io_.add_argument(
        "--max-shard-bytes", type=_byte_size, default=JobConfig.max_shard_bytes, metavar="BYTES",
        help="the largest .tar shard read, and the most a compressed one keeps of the members it holds (bytes, "
        "or with a suffix K, M, G: KiB, MiB, GiB). A shard is held whole in one read task's memory, up to "
        "about twice this at the peak; a larger one gets status too_large, before its body is read where its "
        "size is known. Default 1G",
    )  # fmt: skip
    io_.add_argument(
        "--output", required=True, metavar="URI",
        help="folder or prefix for faces/, images/, runs/ (and crops/); must not be inside an input",
    )  # fmt: skip
    io_.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (MinIO, Ceph); default $AWS_ENDPOINT_URL")
    io_.add_argument("--skip-existing", action="store_true", help="skip inputs that already have an 'ok' row in OUTPUT/images (resume / nightly increments)")
    io_.add_argument("--run-id", default=None, help="name of this run (default: UTC time + random suffix)")
    io_.add_argument(
        "--allow-concurrent-runs", action="store_true",
        help="start even while another run writes to the same output (refused by default: with --skip-existing "
        "both would annotate the same images; see docs/operations.md)",
    )  # fmt: skip
    io_.add_argument("--crops", type=int, choices=[112, 224], default=None, help="also write aligned face crops of this size as JPEG under OUTPUT/crops/")
    io_.add_argument("--align", choices=["pose", "arcface"], default="pose", help="alignment templates: img2pose's five pose-dependent ones, or the single ArcFace one (112 only)")
    io_.add_argument("--rows-per-file", type=_positive_int, default=5000, help="the most images per Parquet file")
    io_.add_argument(
        "--flush-interval", type=_non_negative_float, default=60.0, metavar="SECONDS",
        help="write what the model has done at least this often, even when a file is not full, so that a "
        "killed run keeps its work up to this long before (0: write full files only)",
    )  # fmt: skip
    io_.add_argument(
        "--keep-columns", type=_column_names, default=[], metavar="A,B",
        help="copy these columns of the manifest inputs into the images table, one column each "
        "(img2dataset's save_additional_columns)",
    )  # fmt: skip

    t = p.add_argument_group("Iceberg tables (production and nightly runs; without --catalog: plain Parquet under --output)")
    t.add_argument(
        "--catalog", default=None, metavar="URI",
        help="write Apache Iceberg tables faces, images, runs, each run committed atomically: "
        "sqlite:////abs/path/catalog.db (embedded; the warehouse is OUTPUT/warehouse), rest+https://HOST/PATH, "
        "or glue (glue://REGION). Credentials from the environment only",
    )  # fmt: skip
    t.add_argument("--namespace", default="img2pose", type=_namespace, help="Iceberg namespace of the tables")

    m = p.add_argument_group("model")
    add_model_flags(m, (*COMMON, "precision"))
    m.add_argument(
        "--fast-decode", action="store_true",
        help="decode JPEGs that the model shrinks 2x or more at 1/2, 1/4 or 1/8 scale (several times faster "
        "decoding, less memory and object-store traffic; detections differ slightly from a full decode)",
    )  # fmt: skip
    m.add_argument(
        "--gpu-decode", action="store_true",
        help="JPEGs travel from the read tasks to the model actors as their bytes (about 18x less than the "
        "pixels of a 720p photo) and are decoded there in batches, on the GPU (nvJPEG) where the actors have "
        "one; other formats are decoded on CPU as usual",
    )  # fmt: skip
    m.add_argument(
        "--compile", nargs="?", const="dynamic", default="off", choices=["off", "dynamic", "reduce-overhead", "max-autotune"],
        help="torch.compile the backbone on GPU actors (slower start, faster steady state): dynamic (the flag "
        "alone) compiles one graph for every image size; reduce-overhead and max-autotune one static graph per "
        "padded size, replayed as a CUDA graph (max-autotune also tunes kernels, minutes at start)",
    )  # fmt: skip
    m.add_argument("--max-pixels", type=_positive_int, default=100_000_000, help="refuse images declaring more pixels, before decoding")

    o = p.add_argument_group("output on the console")
    o.add_argument(
        "--progress-interval", type=_positive_float, default=30.0, metavar="SECONDS",
        help="in logs (not a terminal), one progress line per this many seconds; a terminal shows a live bar",
    )  # fmt: skip
    o.add_argument("--verbose", action="store_true", help="also show Ray's own logs and block-level progress")

    r = p.add_argument_group("resources")
    r.add_argument("--batch-size", type=_positive_int, default=None, help="images per model call (default 16 on GPU, 4 on CPU)")
    r.add_argument("--num-gpus-per-actor", type=_gpus, default=None, help="GPUs per model actor, fractions allowed (default: 1 if the cluster has GPUs, else 0 = CPU)")
    r.add_argument(
        "--concurrency", type=_concurrency, default=None, metavar="MIN,MAX",
        help="model actors (autoscaling between MIN and MAX); default: one per GPU, or on CPU one per CPU "
        "(fewer if the nodes' memory cannot hold them)",
    )  # fmt: skip
    r.add_argument(
        "--cpus-per-actor", type=_cpus, default=None,
        help="CPUs Ray reserves for each model actor; default: 1 with GPUs, on CPU the actor's threads, shrunk "
        "so that half a CPU stays free for the listing tasks",
    )  # fmt: skip
    r.add_argument("--torch-threads", type=_positive_int, default=None, help="threads of each CPU model actor (default: the cluster's CPUs / actors)")
    r.add_argument(
        "--load-in", choices=["auto", "actor", "tasks"], default="auto",
        help="where files are read and decoded: in the model actors (no pixels through the object store), or "
        "in CPU tasks of their own that feed them; auto: actor on CPU, tasks with GPUs",
    )  # fmt: skip
    r.add_argument(
        "--wait-for-resources", type=_non_negative_float, default=0.0, metavar="SECONDS",
        help="when the cluster cannot hold the model actors, wait this long for nodes to join (autoscaling "
        "clusters) before failing; 0 fails at once",
    )  # fmt: skip
    r.add_argument("--sources-per-task", type=_positive_int, default=16, help="files (or tar shards) read and decoded per CPU task")
    r.add_argument(
        "--shuffle-partitions", type=_positive_int, default=None,
        help="partitions of the hash joins that remove duplicate inputs and skip done ones (default: the "
        "cluster's CPUs); about one per 10 million inputs keeps each under 1 GB",
    )  # fmt: skip
    return p


def parse_args(argv: list[str] | None = None, prog: str = "annotate.py") -> argparse.Namespace:
    """Parse and cross-check the flags (no I/O)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.gpu_decode and args.fast_decode:
        parser.error("--gpu-decode and --fast-decode exclude each other: the GPU decodes at full size; choose one")
    if args.align == "arcface" and args.crops == 224:
        parser.error("--align arcface defines 112 px crops only; use --crops 112 or --align pose")
    problem = model_flag_error(args)
    if problem:
        parser.error(problem)
    if args.run_id is not None and not _safe_name(args.run_id):
        parser.error("--run-id may hold only letters, digits, '-', '_' and '.'")
    return args


def _safe_name(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_." for c in text) and not text.startswith(".")


def main(argv: list[str] | None = None, prog: str = "annotate.py") -> int:
    args = parse_args(argv, prog)
    from jobs.errors import RunStopped
    from jobs.run import JobError, run_job

    try:
        return run_job(args)
    except JobError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunStopped as exc:  # a signal before or after the pipeline: nothing of this run to record
        print(f"{prog}: stopped by {exc} before the run started or after it was recorded", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""``img2pose report``: a self-contained HTML page about a run's output (see :mod:`img2pose_core.report`)."""

from __future__ import annotations

import argparse
import sys

from ..flags import non_negative_int

__all__ = ["register", "run_report"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a job output (plots, crops, rendered samples)",
        description=(
            "Query a jobs.annotate output (faces/ and images/ tables, runs/*.json) with DuckDB and write one "
            "HTML page with no external references: images by status and the top errors, faces per image, "
            "yaw/pitch/roll histograms and a yaw x pitch heat map, scores, face sizes, the runs' figures, a "
            "gallery of aligned crops and a few images drawn with their stored poses. The plots are also "
            "written as PNG files into <report name>_files/ beside the page."
        ),
    )
    p.add_argument("output", metavar="OUTPUT", help="the job's --output: a folder or an fsspec URL (s3://...)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--run-id", default=None, help="only this run (default: all runs, the latest state of each image)")
    p.add_argument("--crops", type=non_negative_int, default=24, help="aligned crops to show (default 24; 0 for none)")
    p.add_argument("--renders", type=non_negative_int, default=6, help="images to draw with their faces (default 6; 0 for none)")
    p.add_argument("--seed", default="0", help="changes which crops and images the samples pick (default 0)")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint for s3:// URLs (default $AWS_ENDPOINT_URL)")
    p.add_argument("--catalog", default=None, metavar="URI", help="the job's --catalog, for Iceberg tables (default: plain Parquet under OUTPUT)")
    p.add_argument("--namespace", default="img2pose", help="the job's --namespace (Iceberg)")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    """``img2pose report``: write the HTML page of a job's output; 2 when the output cannot be read."""
    from ..report import ReportError, build_report, plural, runs_phrase

    try:
        result = build_report(
            args.output, args.out, run_id=args.run_id, s3_endpoint_url=args.s3_endpoint_url,
            catalog=args.catalog, namespace=args.namespace,
            crops=args.crops, renders=args.renders, seed=str(args.seed),
        )  # fmt: skip
    except ReportError as exc:
        print(f"img2pose: error: {exc}", file=sys.stderr)
        return 2
    f = result.figures
    print(
        f"img2pose: report of {plural(f['images'], 'image')} and {plural(f['faces'], 'face')} from "
        f"{runs_phrase(f['run_ids'])} written to {result.html_path} (plots in {result.files_dir}/)",
        file=sys.stderr,
    )
    for message in result.skipped:
        print(f"img2pose: skipped {message}", file=sys.stderr)
    return 0

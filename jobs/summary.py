"""What a run says when it ends: its manifest's parts (versions, the command line with secrets
redacted) and the short summary printed on the console."""

from __future__ import annotations

import platform
from importlib import metadata

from img2pose_core.output import RunManifest
from img2pose_core.uris import redact_uri

__all__ = ["versions", "redacted_arguments", "print_summary"]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("img2pose-ray", "torch", "torchvision", "ray", "pyarrow", "numpy", "pillow", "fsspec", "s3fs"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def redacted_arguments(arguments: dict) -> dict:
    """The command line as the manifest keeps it: every URI with its secrets redacted."""
    def clean(value):
        if isinstance(value, str):
            return redact_uri(value)
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return {key: clean(value) for key, value in arguments.items()}


def print_summary(manifest: RunManifest) -> None:
    c = manifest.counts
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(c["by_status"].items(), key=lambda kv: (kv[0] != "ok", kv[0])))
    lines = [
        f"run {manifest.run_id} done: pipeline {manifest.pipeline_s:.1f} s, whole command {manifest.wall_s:.1f} s",
        f"  images   {c['images']} ({by_status or 'none'})" + (f", skipped {c['skipped']} already done" if c["skipped"] else ""),
        f"  faces    {c['faces']}",
    ]
    if c.get("not_written"):
        counted = ", ".join(f"{reason} {entry['count']}" for reason, entry in sorted(c["not_written"].items()))
        lines.append(f"  counted  {counted} (not images: no table rows; see runs/{manifest.run_id}.json)")
    lines.append(f"  speed    {manifest.images_per_s} images/s over the pipeline")
    if manifest.iceberg:
        snaps = manifest.iceberg["snapshots"]
        lines.append(f"  tables   {manifest.iceberg['namespace']}.faces/images/runs in {manifest.iceberg['catalog']} "
                     f"(snapshots {snaps.get('faces')}, {snaps.get('images')}, {snaps.get('runs')})")  # fmt: skip
    else:
        lines.append(f"  output   {manifest.output} (faces/{manifest.run_id}/, images/{manifest.run_id}/)")
    lines.append(f"  manifest {manifest.output}/runs/{manifest.run_id}.json")
    print("\n".join(lines), flush=True)

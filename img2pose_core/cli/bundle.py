"""``img2pose bundle create|fetch|verify``: make, download and check model bundles."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import Field, fields
from pathlib import Path

from ..flags import MODEL_FLAGS, HelpFormatter, model_flag_error

__all__ = ["register"]

# ModelSettings fields that `bundle create` exposes as options: a model flag's own type where the
# field is one (flags.MODEL_FLAGS), else by the field's annotation.
_SETTING_TYPES = {"int": int, "float": float, "int | None": int}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bundle`` command and its ``create``, ``fetch`` and ``verify`` actions."""
    p = subparsers.add_parser(
        "bundle",
        help="create, download or verify a model bundle (weights + pose statistics + reference points)",
        description="Model bundles hold the img2pose weights and the files that go with them, checked by sha256.",
        formatter_class=HelpFormatter,
    )
    actions = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    _add_create(actions)
    _add_fetch(actions)
    _add_verify(actions)


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``action``; a BundleError becomes ``img2pose: error: ...`` on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from ..bundle import BundleError

        try:
            return action(args)
        except (BundleError, OSError) as exc:  # OSError: e.g. an --out folder that cannot be written
            print(f"img2pose: error: {exc}", file=sys.stderr)
            return 2

    return run


# --- create ----------------------------------------------------------------------------------------
def _add_create(actions: argparse._SubParsersAction) -> None:
    # settings, not model: the parser of every command is built at start, and model imports torch.
    from ..settings import ModelSettings

    p = actions.add_parser(
        "create",
        help="make a bundle from local files",
        description="Check the weights and arrays (the weights must load into img2pose) and copy them with a "
        "bundle.json into --out. The model settings given are stored as the bundle's defaults: every command "
        "using the bundle runs with them unless its own flags say otherwise.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--weights", required=True, type=Path,
                   help=".pth/.pt checkpoint (any released layout) or .safetensors")
    p.add_argument("--pose-mean", required=True, type=Path, help=".npy with the 6 pose means")
    p.add_argument("--pose-stddev", required=True, type=Path, help=".npy with the 6 pose standard deviations")
    p.add_argument("--points-68", required=True, type=Path, help=".npy, 68x3 3D reference points")
    p.add_argument("--points-5", required=True, type=Path, help=".npy, 5x3 3D reference points")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    p.add_argument("--name", default=None, help="bundle name (default: the weights file's stem)")
    p.add_argument("--license", default="unspecified",
                   help="licence of the files (the authors' img2pose weights: 'CC-BY-NC-4.0')")
    p.add_argument("--source", default="", help="where the files come from (URL or note)")
    p.add_argument("--overwrite", action="store_true", help="replace a different bundle already in --out")
    group = p.add_argument_group("model settings stored as the bundle's defaults")
    for f in fields(ModelSettings):
        if f.type in _SETTING_TYPES:
            kind = MODEL_FLAGS[f.name][0]["type"] if f.name in MODEL_FLAGS else _SETTING_TYPES[f.type]
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"setting_{f.name}", type=kind,
                               default=None, metavar=f.type.split()[0].upper(), help=_setting_help(f))
    p.set_defaults(run=_guarded(_run_create))


def _setting_help(f: Field) -> str:
    """``default: X`` for a ModelSettings field; the threshold also says who uses it."""
    if f.name == "threshold":
        return f"default: {f.default}; predict, render, the Python API and the annotation job keep faces above it"
    return f"default: {'none (no cap)' if f.default is None else f.default}"


def _run_create(args: argparse.Namespace) -> int:
    from ..bundle import create_bundle
    from ..settings import ModelSettings

    chosen = {
        f.name: getattr(args, f"setting_{f.name}")
        for f in fields(ModelSettings)
        if getattr(args, f"setting_{f.name}", None) is not None
    }
    settings = ModelSettings(**chosen)
    problem = model_flag_error(settings)  # the sizes as stored: given ones with the defaults of the others
    if problem:  # an argument error, in the form of the parser's (img2pose_core.cli.parser)
        print(f"img2pose bundle create: error: {problem} (see img2pose bundle create --help)", file=sys.stderr)
        return 2
    out = create_bundle(
        args.weights, args.pose_mean, args.pose_stddev, args.points_68, args.points_5, args.out,
        settings=settings, name=args.name, license=args.license, source=args.source,
        overwrite=args.overwrite,
    )
    print(f"bundle written to {out}")
    return 0


# --- fetch -----------------------------------------------------------------------------------------
def _add_fetch(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "fetch",
        help="download the authors' weights (CC BY-NC 4.0, non-commercial) and make a bundle of them",
        description="Download the official img2pose release and assemble a bundle. The weights are CC BY-NC 4.0: "
        "non-commercial use only. Mirrors: set IMG2POSE_URL_ZOO_ZIP, IMG2POSE_URL_POINTS_68, IMG2POSE_URL_POINTS_5, "
        "IMG2POSE_URL_HF_WEIGHTS, IMG2POSE_URL_HF_CONFIG.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--source", choices=["official", "huggingface"], default="official",
                   help="official: the authors' Google Drive zip + GitHub; huggingface: py-feat/img2pose on the hub")
    p.add_argument("--variant", choices=["v1", "v1_ft_300w_lp"], default="v1",
                   help="v1 (WIDER FACE) or v1_ft_300w_lp (fine-tuned on 300W-LP); default v1")
    p.add_argument("--out", type=Path, default=None, help="bundle folder (default: the cache's official bundle)")
    p.add_argument("--overwrite", action="store_true", help="replace a different bundle already in --out")
    p.add_argument("--quiet", action="store_true", help="no download progress")
    p.set_defaults(run=_guarded(_run_fetch))


def _run_fetch(args: argparse.Namespace) -> int:
    from ..bundle import LICENSE_NOTICE, fetch_official, official_bundle_dir

    out = args.out or official_bundle_dir(args.variant)
    print(LICENSE_NOTICE)
    path = fetch_official(out, source=args.source, variant=args.variant, progress=not args.quiet,
                          overwrite=args.overwrite)
    print(f"bundle written to {path}")
    return 0


# --- verify ----------------------------------------------------------------------------------------
def _add_verify(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "verify",
        help="open a bundle, check every file's sha256 and that the weights load",
        description="Open a bundle (folder or URL), check each file against bundle.json and load the weights.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("uri", help="bundle folder or URL (s3://, gs://, https:// ...)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (else $AWS_ENDPOINT_URL)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache for remote bundles (default: $IMG2POSE_CACHE)")
    p.add_argument("--no-load", action="store_true", help="only check the files; do not build the model")
    p.set_defaults(run=_guarded(_run_verify))


def _run_verify(args: argparse.Namespace) -> int:
    from ..bundle import open_bundle

    options = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    bundle = open_bundle(args.uri, cache_dir=args.cache_dir, storage_options=options, verify=True)
    print(f"bundle   {bundle.uri}")
    if str(bundle.root) != bundle.uri:
        print(f"local    {bundle.root}")
    print(f"name     {bundle.name}")
    print(f"license  {bundle.license}")
    print("files    (sha256 verified)")
    for role, entry in bundle.manifest["files"].items():
        size = (bundle.root / entry["path"]).stat().st_size
        print(f"  {role:<12} {entry['path']:<40} {_human(size):>10}  {entry['sha256']}")
    print("model    " + " ".join(f"{k}={v}" for k, v in bundle.settings.to_dict().items() if k != "extra"))
    if not args.no_load:
        model = bundle.build_model()
        print(f"weights  load: ok ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} MB"


"""Every place that states the job's command line (RayJob entrypoints, the nightly CronJob's
ConfigMap, aws.yaml's example, the README and docs/operations.md) and the job's own parser to check
them with."""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from pathlib import Path

import yaml

from cluster_files import AWS, KUBERAY, OPERATIONS, README, ROOT, load_docs, load_one, objects_of, rel

CRONJOBS = objects_of("CronJob")


def kustomization() -> dict:
    return load_one(KUBERAY / "kustomization.yaml")


def configmap_files(name: str) -> dict[str, Path]:
    """key -> file of the ConfigMap that kustomization.yaml generates under ``name``."""
    for gen in kustomization().get("configMapGenerator", []):
        if gen["name"] == name:
            out = {}
            for entry in gen.get("files", []):
                key, _, path = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
                out[key] = KUBERAY / path
            return out
    raise AssertionError(f"kustomization.yaml generates no ConfigMap named {name}")


def cronjob_rayjob_files() -> list[tuple[str, Path]]:
    """For each CronJob: the RayJob manifest file it creates (through its ConfigMap volume)."""
    out = []
    for label, cron in CRONJOBS:
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        argv = container.get("command", []) + container.get("args", [])
        assert "create" in argv and "-f" in argv, f"{label}: the container does not run `kubectl create -f`: {argv}"
        manifest_path = argv[argv.index("-f") + 1]
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
        folder, _, key = manifest_path.rpartition("/")
        assert folder in mounts, f"{label}: {manifest_path} is not under a mounted volume ({sorted(mounts)})"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[folder])
        files = configmap_files(volume["configMap"]["name"])
        assert key in files, f"{label}: ConfigMap {volume['configMap']['name']} has no key {key} ({sorted(files)})"
        assert files[key].is_file(), f"{label}: {rel(files[key])} does not exist"
        out.append((label, files[key]))
    return out



def _annotate_argv(command: str) -> list[str] | None:
    """The arguments of ``python -m jobs.annotate`` (or ``img2pose annotate``) in a shell command, up to a
    shell operator; None if absent, as for the file form ``python jobs/annotate.py``, which runs the
    image's installed ``jobs`` instead of the submitted one (docs/operations.md)."""
    from doc_commands import module_args_start

    tokens = shlex.split(command, comments=True)
    start = module_args_start(tokens, "jobs.annotate")
    if start is None:
        return None
    argv = []
    for t in tokens[start:]:
        if t in ("&&", "||", ";", "|", "&") or t.startswith((">", "<", "2>")):
            break
        if t.endswith(";"):
            argv.append(t[:-1])
            break
        argv.append(t)
    return argv


def markdown_commands(path: Path) -> list[str]:
    """Every command line of the shell-like fenced code blocks that runs the annotation job."""
    from doc_commands import shell_lines

    if not path.is_file():
        return []
    return [line for line in shell_lines(path) if _annotate_argv(line) is not None]


def job_commands() -> list[tuple[str, str]]:
    """(source, command) of every place that states the job's command line."""
    out = []
    for label, doc in objects_of("RayJob"):
        out.append((f"{label} spec.entrypoint", (doc.get("spec") or {}).get("entrypoint", "")))
    for label, doc in objects_of("RayCronJob"):
        template = (doc.get("spec") or {}).get("jobTemplate") or {}
        out.append((f"{label} spec.jobTemplate.entrypoint", template.get("entrypoint", "")))
    try:
        pairs = cronjob_rayjob_files()
    except (AssertionError, KeyError, StopIteration, ValueError):
        pairs = []  # reported by test_nightly_cronjob_creates_the_rayjob_with_a_generated_name
    for label, path in pairs:
        for rayjob in load_docs(path):
            entrypoint = (rayjob.get("spec") or {}).get("entrypoint", "")
            out.append((f"{label} -> ConfigMap -> {rel(path)} spec.entrypoint", entrypoint))
    try:
        example = load_one(AWS).get("metadata", {}).get("example_submit")
    except yaml.YAMLError:
        example = None  # reported by test_every_yaml_file_parses
    if example:
        out.append((f"{rel(AWS)} metadata.example_submit", example))
    for path in (README, OPERATIONS):
        for i, command in enumerate(markdown_commands(path)):
            out.append((f"{rel(path)} command {i + 1}", command))
    return out


JOB_COMMANDS = job_commands()


def _job_parser():
    """jobs.annotate.parse_args; the repository root is put on sys.path when `jobs` is not importable
    (as `python -m` does from the root), e.g. under a bare `pytest` with an older editable install."""
    try:
        from jobs.annotate import parse_args
    except ModuleNotFoundError:
        sys.path.insert(0, str(ROOT))
        from jobs.annotate import parse_args
    return parse_args


def parse_job_args(argv: list[str]):
    """jobs.annotate.parse_args(argv), or None with the parser's message when it refuses them."""
    parse_args = _job_parser()

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse_args(argv), ""
        except SystemExit as exc:
            return None, f"exit {exc.code}: {err.getvalue().strip()}"


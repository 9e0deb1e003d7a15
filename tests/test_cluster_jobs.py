"""The job's command line as every manifest and doc states it is accepted by jobs.annotate's own
parser (and a wrong flag is not); cluster runs read and write object storage and resume; no command
anywhere runs a module of jobs/ or benchmarks/ by its file name."""

from __future__ import annotations

import pytest

from conftest import ROOT
from doc_commands import SCRIPT_FORM, script_form_lines
from job_commands import JOB_COMMANDS, _annotate_argv, parse_job_args

@pytest.mark.parametrize("source,command", JOB_COMMANDS, ids=[s for s, _ in JOB_COMMANDS])
def test_job_arguments_are_accepted_by_the_job(source, command):
    argv = _annotate_argv(command)
    assert argv is not None, f"{source}: no `python -m jobs.annotate` in {command!r}"
    if "--help" in argv or "-h" in argv:
        pytest.skip("a --help command")
    args, message = parse_job_args(argv)
    assert args is not None, f"{source}: jobs.annotate refuses {argv}: {message}"


def test_job_commands_are_found_everywhere():
    sources = [s for s, _ in JOB_COMMANDS]
    for needle in ("RayJob spec.entrypoint", "RayCronJob spec.jobTemplate", "-> ConfigMap ->", "aws.yaml metadata", "docs/operations.md"):
        assert any(needle in s for s in sources), f"no job command found for {needle!r} (found: {sources})"


def test_a_wrong_flag_is_refused():
    """Negative control: the argument check does fail on a flag the job does not have, or a bad value."""
    (_, entrypoint), *_ = [(s, c) for s, c in JOB_COMMANDS if "RayJob spec.entrypoint" in s]
    argv = _annotate_argv(entrypoint)
    assert parse_job_args(argv)[0] is not None
    assert parse_job_args(argv + ["--no-such-flag"])[0] is None
    assert parse_job_args([a.replace("--batch-size", "--batchsize") for a in argv])[0] is None
    swapped = argv[:]
    swapped[swapped.index("--concurrency") + 1] = "4,2"  # MIN > MAX
    assert parse_job_args(swapped)[0] is None
    assert parse_job_args([a for a in argv if a != "--output" and not a.startswith("s3://annotations")])[0] is None


def test_cluster_jobs_read_and_write_object_storage_and_resume():
    """Manifests run the job on object storage with a bundle from object storage, resumable."""
    for source, command in JOB_COMMANDS:
        if "README" in source or "operations.md" in source:
            continue
        assert "python -m jobs.annotate" in command, f"{source}: run the job as `python -m jobs.annotate`"
        args, _ = parse_job_args(_annotate_argv(command))
        assert all("://" in uri for uri in args.input), f"{source}: --input should be an object-store URL"
        assert "://" in args.output, f"{source}: --output should be an object-store URL"
        assert args.bundle and "://" in args.bundle, f"{source}: --bundle should come from object storage"
        assert args.skip_existing, f"{source}: cluster runs resume with --skip-existing"


# Where commands are written: docs, manifests, the image, the benchmarks' and jobs' usage texts.
COMMAND_FILES = sorted(
    {ROOT / "README.md", ROOT / "cluster" / "Dockerfile"}
    | set((ROOT / "docs").glob("*.md"))
    | set((ROOT / "cluster").rglob("*.yaml"))
    | set((ROOT / "benchmarks").glob("*.py"))
    | set((ROOT / "benchmarks").glob("*.sh"))
    | set((ROOT / "jobs").glob("*.py"))
    | set((ROOT / "img2pose_core").rglob("*.py"))
)


def test_no_command_runs_a_module_by_its_file_name():
    """`python jobs/annotate.py` puts jobs/ first on sys.path: on a cluster its imports would come from
    the image's installed copy, not the submitted checkout. Every command is `python -m jobs.X` (or
    `python -m benchmarks.X`, `img2pose COMMAND`)."""
    assert SCRIPT_FORM.search('python jobs/annotate.py --input x') and SCRIPT_FORM.search('CMD ["python", "jobs/annotate.py"]')
    assert SCRIPT_FORM.search('exec "$PYTHON" benchmarks/gpu_check.py') and SCRIPT_FORM.search("`benchmarks/speed.py --device cuda`")
    assert not SCRIPT_FORM.search("python -m jobs.annotate --input x") and not SCRIPT_FORM.search("see `jobs/annotate.py`")
    assert _annotate_argv("python jobs/annotate.py --input x --output y") is None
    assert _annotate_argv("python -m jobs.annotate --input x") == ["--input", "x"] == _annotate_argv("img2pose annotate --input x")
    assert len(COMMAND_FILES) > 40
    found = {str(path.relative_to(ROOT)): script_form_lines(path) for path in COMMAND_FILES}
    assert not {k: v for k, v in found.items() if v}, "run these as `python -m MODULE` from the repository root"

"""Argument errors in two lines, the report's count of runs, and the image's locks against the test environment.

- every command's argument error is ``usage: PROG REQUIRED [options]`` and ``PROG: error: WHAT (see PROG
  --help)``, exit 2, for ``img2pose`` and each subcommand and for the job modules run with ``python -m``;
  ``--help`` is argparse's whole help still;
- a flag unknown to a subcommand is reported by that subcommand, with the close flag where one is;
- ``img2pose report`` counts the runs of the output (manifests and rows), not the runs of the latest rows;
- a drift between the test environment and cluster/'s locks fails ``test_locks_are_closed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT
from jobs import cli

# (argv of `img2pose`, the command named in the error, what the error says)
ERRORS = [
    ([], "img2pose", "the following arguments are required: COMMAND"),
    (["anotate", "--input", "x/"], "img2pose", "invalid choice: 'anotate'"),
    (["predict"], "img2pose predict", "the following arguments are required: IMAGE"),
    (["predict", "x.jpg", "--threshold", "2"], "img2pose predict", "threshold must be in [0, 1), got 2"),
    (["predict", "--min-size", "800", "--max-size", "400", "x.jpg"], "img2pose predict", "--max-size 400 is below --min-size 800"),
    (["predict", "--precision", "fp61", "x.jpg"], "img2pose predict", "did you mean fp16?"),
    (["render", "--out", "o/", "x.jpg", "--max-side", "big"], "img2pose render", "argument --max-side: invalid int value"),
    (["report"], "img2pose report", "the following arguments are required: OUTPUT"),
    (["report", "out/", "--crops", "-1"], "img2pose report", "argument --crops: expected 0 or a positive integer, got -1"),
    (["report", "out/", "more/"], "img2pose report", "unrecognized arguments: more/"),
    (["bundle"], "img2pose bundle", "the following arguments are required: ACTION"),
    (["bundle", "creat"], "img2pose bundle", "invalid choice: 'creat'"),
    (["bundle", "create", "--weights", "w.pth"], "img2pose bundle create", "required: --pose-mean, --pose-stddev"),
    (["bundle", "fetch", "--variant", "v2"], "img2pose bundle fetch", "argument --variant: invalid choice: 'v2'"),
    (["bundle", "verify"], "img2pose bundle verify", "the following arguments are required: uri"),
    (["annotate", "--input", "x/"], "img2pose annotate", "the following arguments are required: --output"),
    (["annotate", "--input", "x/", "--output", "o/", "--gpu-decode", "--fast-decode"], "img2pose annotate",
     "--gpu-decode and --fast-decode exclude each other"),
    (["train", "--data", "d/", "--output", "o/", "--epochs", "many"], "img2pose train", "argument --epochs: invalid int value"),
    (["evaluate", "--benchmark", "widr", "--data", "d/", "--output", "r.json"], "img2pose evaluate", "did you mean wider?"),
    (["prepare", "--output", "o/"], "img2pose prepare", "--format wider needs --train-list"),
]  # fmt: skip


def _short_error(err: str, prog: str) -> list[str]:
    """The lines of a short argument error of ``prog``, checked for its shape."""
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith(f"usage: {prog} ") or lines[0] == f"usage: {prog}", err
    assert lines[-1].startswith(f"{prog}: error: ") and lines[-1].endswith(f" (see {prog} --help)"), err
    return lines


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("argv, prog, message", ERRORS, ids=[" ".join(a[:3]) or "(none)" for a, _, _ in ERRORS])
def test_every_commands_argument_error_is_two_lines_naming_it(argv, prog, message, capsys):
    err = _refused(argv, capsys)
    _short_error(err, prog)
    assert message in err, err


def test_bundle_create_refuses_its_stored_sizes_in_the_same_form(capsys, tmp_path):
    """Checked after parsing (the sizes as stored), the error still names the command and its help."""
    files = ["--weights", "w.pth", "--pose-mean", "m.npy", "--pose-stddev", "s.npy", "--points-68", "p68.npy",
             "--points-5", "p5.npy", "--out", str(tmp_path / "b")]  # fmt: skip
    assert cli.main(["bundle", "create", *files, "--max-size", "500"]) == 2
    err = capsys.readouterr().err
    assert err == ("img2pose bundle create: error: --max-size 500 is below --min-size 640 "
                   "(see img2pose bundle create --help)\n")  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_the_short_usage_names_the_required_arguments(capsys):
    usage = _short_error(_refused(["annotate", "--input", "x/"], capsys), "img2pose annotate")[0]
    assert usage == "usage: img2pose annotate --input URI --output URI [options]"
    usage = _short_error(_refused(["predict"], capsys), "img2pose predict")[0]
    assert usage == "usage: img2pose predict [options] IMAGE [IMAGE ...]"
    usage = _short_error(_refused([], capsys), "img2pose")[0]
    assert usage == "usage: img2pose COMMAND ..."


# --- typos: reported by the subcommand, with the close flag ----------------------------------------
TYPOS = [
    (["annotate", "--inptu", "x/"], "img2pose annotate", "--inptu (did you mean --input?)"),
    (["annotate", "--input", "x/", "--outptu", "o/"], "img2pose annotate", "--outptu (did you mean --output?)"),
    (["predict", "--thresold", "0.5", "x.jpg"], "img2pose predict", "--thresold (did you mean --threshold?)"),
    (["render", "--outt", "o/", "x.jpg"], "img2pose render", "--outt (did you mean --out?)"),
    (["report", "out/", "--run_id", "r1"], "img2pose report", "--run_id (did you mean --run-id?)"),
    (["bundle", "verify", "b/", "--no-lod"], "img2pose bundle verify", "--no-lod (did you mean --no-load?)"),
    (["train", "--data", "d/", "--ouptut", "o/"], "img2pose train", "--ouptut (did you mean --output?)"),
    (["evaluate", "--benchmark", "wider", "--data", "d/", "--output", "r.json", "--limt", "3"], "img2pose evaluate",
     "--limt (did you mean --limit?)"),
    (["prepare", "--output", "o/", "--trian-list", "l.txt"], "img2pose prepare", "--trian-list (did you mean --train-list?)"),
]  # fmt: skip


@pytest.mark.parametrize("argv, prog, message", TYPOS, ids=[" ".join(a[:2]) for a, _, _ in TYPOS])
def test_a_mistyped_flag_is_reported_by_its_subcommand_with_the_close_flag(argv, prog, message, capsys):
    err = _refused(argv, capsys)
    lines = _short_error(err, prog)
    assert lines[-1] == f"{prog}: error: unrecognized arguments: {message} (see {prog} --help)"


def test_a_flag_close_to_none_is_named_without_a_guess(capsys):
    err = _refused(["predict", "--zzzz", "x.jpg"], capsys)
    assert _short_error(err, "img2pose predict")[-1] == (
        "img2pose predict: error: unrecognized arguments: --zzzz (see img2pose predict --help)"
    )


def test_a_mistyped_command_gets_the_close_command(capsys):
    err = _refused(["anotate", "--input", "x/"], capsys)
    assert "did you mean annotate?" in _short_error(err, "img2pose")[-1]
    err = _refused(["bundle", "creat"], capsys)
    assert "did you mean create?" in _short_error(err, "img2pose bundle")[-1]


def test_abbreviations_and_negative_values_are_not_typos(capsys):
    """argparse takes a unique prefix of a flag (--inp for --input) and a negative number as a value:
    the error is then about the value, not an unknown flag."""
    err = _refused(["annotate", "--inp", "x/", "--out", "o/", "--threshold", "1.5"], capsys)
    assert "argument --threshold: threshold must be in [0, 1), got 1.5" in _short_error(err, "img2pose annotate")[-1]
    err = _refused(["predict", "--threshold", "-0.5", "x.jpg"], capsys)
    assert "argument --threshold: threshold must be in [0, 1), got -0.5" in _short_error(err, "img2pose predict")[-1]
    err = _refused(["predict", "--max", "9", "x.jpg"], capsys)  # ambiguous: argparse's own message
    assert "ambiguous option: --max could match --max-size, --max-faces" in _short_error(err, "img2pose predict")[-1]


# --- the real commands ------------------------------------------------------------------------------
COMMANDS = [
    (["-m", "jobs.cli", "annotate", "--inptu", "x/"], "img2pose annotate", "--inptu (did you mean --input?)"),
    (["-m", "jobs.cli", "predict", "--thresold", "0.5", "x.jpg"], "img2pose predict", "did you mean --threshold?"),
    (["-m", "img2pose_core.cli", "bundle", "verify", "--no-lod", "b/"], "img2pose bundle verify", "did you mean --no-load?"),
    (["-m", "jobs.annotate", "--inptu", "x/"], "annotate.py", "--inptu (did you mean --input?)"),
    (["-m", "jobs.train", "--data", "d/"], "train.py", "the following arguments are required: --output"),
    (["-m", "jobs.evaluate", "--benchmark", "wider", "--data", "d/", "--output", "r.json", "--threshold", "7"],
     "evaluate.py", "threshold must be in [0, 1)"),
    (["-m", "jobs.prepare_dataset", "--output", "o/", "--format", "biwi"], "prepare_dataset.py",
     "--format biwi needs --frame-list"),
]  # fmt: skip


@pytest.mark.parametrize("argv, prog, message", COMMANDS, ids=[" ".join(a[1:3]) for a, _, _ in COMMANDS])
def test_the_commands_and_job_modules_answer_in_two_lines(argv, prog, message):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    _short_error(proc.stderr, prog)
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [["annotate", "--help"], ["bundle", "create", "--help"], ["report", "--help"]])
def test_help_is_argparses_whole_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("usage: img2pose ")
    usage = captured.out.split("\n\n", 1)[0]  # argparse's usage: every flag, over several lines
    assert usage.count("\n") >= 2 and "[-h]" in usage and "options:" in captured.out


# --- img2pose report: the runs of the output --------------------------------------------------------
def _write_run(root: Path, run_id: str, day: int, *, rows: bool = True, manifest: bool = True) -> None:
    """A run that processed the image /gone/a.jpg (unreadable: the report draws nothing) on 2026-01-``day``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from img2pose_core.output import FACES_SCHEMA, IMAGES_SCHEMA

    at = datetime(2026, 1, day, tzinfo=timezone.utc)
    if rows:
        row = {**{f.name: None for f in IMAGES_SCHEMA}, "run_id": run_id, "image_uri": "/gone/a.jpg",
               "status": "unreadable", "error": "gone", "model_sha256": "ab" * 32, "processed_at": at}  # fmt: skip
        for name, table_rows, schema in (("images", [row], IMAGES_SCHEMA), ("faces", [], FACES_SCHEMA)):
            (root / name / run_id).mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), root / name / run_id / f"part-{'0' * 32}.parquet")
    if manifest:
        (root / "runs").mkdir(parents=True, exist_ok=True)
        doc = {"run_id": run_id, "status": "succeeded", "started_at": at.isoformat(), "ended_at": at.isoformat(),
               "counts": {"images": int(rows)}}  # fmt: skip
        (root / "runs" / f"{run_id}.json").write_text(json.dumps(doc))


def _report(output: Path, capsys, *more: str) -> tuple[str, str]:
    page = output.parent / "report.html"
    assert cli.main(["report", str(output), "--out", str(page), *more]) == 0
    err = capsys.readouterr().err
    return err.splitlines()[0], page.read_text()


def test_report_counts_the_runs_of_the_output(tmp_path, capsys):
    """Three runs of the same image: its latest state is one run's row, the output holds three runs. The
    latest is the last to start (its manifest's started_at), whatever its name."""
    out = tmp_path / "output"
    for day, run_id in enumerate(["run-c", "run-a", "run-b"], 1):
        _write_run(out, run_id, day)
    line, page = _report(out, capsys)
    assert "report of 1 image and 0 faces from 3 runs (latest: run-b) written to" in line, line
    assert "<td>runs</td><td>3 runs (latest: run-b)</td>" in page
    assert "<td>… holding these rows</td><td>1</td>" in page and "3 run manifests under" in page
    line, page = _report(out, capsys, "--run-id", "run-a")
    assert "from 1 run (run-a) written to" in line, line
    assert "<td>runs</td><td>1 run (run-a)</td>" in page and "1 run manifest under" in page


def test_report_counts_runs_without_rows_and_without_a_manifest(tmp_path, capsys):
    """A run that wrote no row (all skipped) has its manifest; one that stopped before its manifest has rows."""
    out = tmp_path / "output"
    _write_run(out, "first", 1)
    _write_run(out, "stopped", 2, manifest=False)
    _write_run(out, "skipped-all", 3, rows=False)
    line, page = _report(out, capsys)
    assert "from 3 runs (latest: skipped-all)" in line, line
    assert "2 run manifests under" in page


def test_report_of_one_run_says_run_not_runs(tmp_path, capsys):
    out = tmp_path / "output"
    _write_run(out, "only", 1)
    line, page = _report(out, capsys)
    assert "report of 1 image and 0 faces from 1 run (only) written to" in line, line
    assert "(s)" not in line and "manifest(s)" not in page and "1 run manifest under" in page


# --- the image's locks and the test environment ----------------------------------------------------
def test_a_lock_drifted_from_the_test_environment_fails_the_lock_check():
    """``test_locks_are_closed`` fails where the environment holds another version than the lock (it
    only warned before): idna, locked at its installed version with ``.post1`` added, which every
    requirement of it still accepts."""
    from test_cluster_image import REST_LOCK, TORCH_LOCK, check_locks, read_lock

    torch_lock, rest = read_lock(TORCH_LOCK), read_lock(REST_LOCK)
    installed = metadata.version("idna")
    assert rest["idna"] == installed, "the lock and the environment differ already (test_locks_are_closed says how)"
    with pytest.raises(AssertionError, match=rf"name other versions: \['idna \(installed {installed}, locked {installed}.post1\)'\]"):
        check_locks(torch_lock, {**rest, "idna": f"{installed}.post1"})
    rest_without = {name: version for name, version in rest.items() if name != "tqdm"}
    with pytest.raises(AssertionError, match=r"pyproject.toml needs tqdm==4\.70\.1: not in the locks"):
        check_locks(torch_lock, rest_without)

"""The ``img2pose`` front door and the flags every command shares.

- every ``--help`` (and every parser) is built without torch, torchvision, Ray, pyarrow or numpy;
- help texts show ``(default: X)`` only where X says something;
- ``img2pose annotate|train|evaluate|prepare`` run the modules of ``jobs/`` with their own parsers;
- the model flags have one validation everywhere;
- one threshold rule: the bundle's unless a flag says otherwise, 0.8 in new bundles, for ``predict``,
  ``render``, the ``Predictor`` and the annotation job (its manifest records the value used).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_golden
from jobs import cli
from img2pose_core.flags import HelpFormatter, resolve_model_flags
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401  (ray_head starts after it)

HEAVY = ("torch", "torchvision", "ray", "pyarrow", "numpy")
JOB_SCRIPTS = ("annotate", "train", "evaluate", "prepare_dataset")


def _imported(stderr: str) -> set[str]:
    """The modules a ``python -X importtime`` run imported, from its report on stderr."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the report's header line
                names.add(name)
    return names


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


# --- fast --help ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    ["import img2pose_core.cli as m; m.build_parser()", "import jobs.cli as m; m.build_parser()"]
    + [f"import jobs.{name} as m; m.build_parser()" for name in JOB_SCRIPTS],
)
def test_building_a_parser_imports_no_heavy_module(code):
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = _imported(proc.stderr)
    assert "argparse" in names  # the report was read
    assert not _heavy(names), f"{code}: imports {_heavy(names)[:10]}"


HELPS = [
    ["-m", "jobs.cli", *argv]
    for argv in (
        ["--help"], ["predict", "--help"], ["render", "--help"], ["report", "--help"], ["bundle", "--help"],
        ["bundle", "create", "--help"], ["bundle", "fetch", "--help"], ["bundle", "verify", "--help"],
        ["annotate", "--help"], ["train", "--help"], ["evaluate", "--help"], ["prepare", "--help"],
    )
] + [["-m", f"jobs.{name}", "--help"] for name in JOB_SCRIPTS]  # fmt: skip


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(a) for a in HELPS])
def test_every_help_answers_without_heavy_imports(argv):
    proc = _python(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: ")
    assert not _heavy(_imported(proc.stderr)), _heavy(_imported(proc.stderr))[:10]
    assert "(default: None)" not in proc.stdout and "(default: False)" not in proc.stdout


def test_top_level_help_lists_every_command():
    text = cli.build_parser().format_help()
    for command in ("predict", "render", "report", "bundle", "annotate", "train", "evaluate", "prepare"):
        assert f"\n    {command} " in text, command


# --- help texts -------------------------------------------------------------------------------------
def test_help_shows_only_defaults_that_say_something():
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--needed", required=True, default="x", help="required flag")
    p.add_argument("--none", default=None, help="a None default")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--empty", default=[], help="an empty list")
    p.add_argument("--stated", default=3, help="says it (default 3)")
    p.add_argument("--shown", default=0.6, help="a number")
    p.add_argument("--zero", default=0.0, help="zero is a value")
    text = " ".join(p.format_help().split())
    assert text.count("(default") == 3
    assert "says it (default 3)" in text and "a number (default: 0.6)" in text and "zero is a value (default: 0.0)" in text


def test_job_help_says_the_threshold_rule_and_hides_empty_defaults():
    from jobs import annotate, evaluate

    text = " ".join(annotate.build_parser().format_help().split())
    assert "default: the threshold stored in the bundle: 0.8 unless it was created with another --threshold" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "repeatable. A folder" in text and "Local paths, s3://, gs://, https:// or any fsspec URL (default" not in text
    assert "(default: 5000)" in text  # --rows-per-file: a default worth showing
    text = " ".join(evaluate.build_parser().format_help().split())
    assert "not the bundle's, as the benchmarks define it" in text


# --- the front door ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, module", [("annotate", "annotate"), ("train", "train"), ("evaluate", "evaluate"), ("prepare", "prepare_dataset")]
)  # fmt: skip
def test_job_commands_run_the_jobs_main(command, module, monkeypatch):
    import importlib

    job = importlib.import_module(f"jobs.{module}")
    calls = []
    monkeypatch.setattr(job, "main", lambda argv, prog: calls.append((argv, prog)) or 7)
    argv = ["--input", "in/", "--output", "out/", "--threshold", "0.3", "-h"]
    assert cli.main([command, *argv]) == 7
    assert calls == [(argv, f"img2pose {command}")]


def test_job_command_messages_name_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["annotate", "--input", "x/"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: img2pose annotate" in err and "img2pose annotate: error:" in err and "--output" in err
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--output", "o/"])
    assert "img2pose prepare: error: --format wider needs --train-list" in capsys.readouterr().err


def test_job_parsers_are_the_scripts():
    """`img2pose annotate` and `python -m jobs.annotate` accept exactly the same flags."""
    from jobs import annotate

    script, front = annotate.build_parser(), annotate.build_parser("img2pose annotate")
    assert [a.option_strings for a in script._actions] == [a.option_strings for a in front._actions]
    assert front.prog == "img2pose annotate" and script.prog == "annotate.py"


# --- one validation of the model flags --------------------------------------------------------------
def _refused(parse, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


BAD_MODEL_FLAGS = [
    (["--threshold", "1"], "threshold must be in [0, 1)"),
    (["--threshold", "nan"], "threshold must be in [0, 1)"),
    (["--threshold", "-0.1"], "threshold must be in [0, 1)"),
    (["--min-size", "0"], "expected a positive integer"),
    (["--max-size", "12.5"], "expected a positive integer"),
    (["--max-faces", "-1"], "expected a positive integer"),
    (["--min-size", "800", "--max-size", "400"], "--max-size 400 is below --min-size 800"),
]


@pytest.mark.parametrize("bad, message", BAD_MODEL_FLAGS)
def test_model_flags_are_validated_alike_everywhere(bad, message, capsys, tmp_path):
    from jobs import annotate, evaluate

    commands = {
        "predict": (cli.main, ["predict", "x.jpg"]),
        "render": (cli.main, ["render", "x.jpg", "--out", str(tmp_path)]),
        "annotate.py": (annotate.parse_args, ["--input", "in/", "--output", "out/"]),
        "img2pose annotate": (cli.main, ["annotate", "--input", "in/", "--output", "out/"]),
        "evaluate.py": (evaluate.main, ["--benchmark", "wider", "--data", "d/", "--output", "r.json"]),
    }
    for name, (parse, argv) in commands.items():
        if name == "evaluate.py" and bad[0] == "--max-faces":
            continue  # the benchmarks score every face: no --max-faces there
        err = _refused(parse, argv + bad, capsys)
        assert message in err, (name, err)


def test_bundle_create_validates_its_settings_as_the_flags(capsys, tmp_path):
    files = ["--weights", "w.pth", "--pose-mean", "m.npy", "--pose-stddev", "s.npy", "--points-68", "p68.npy",
             "--points-5", "p5.npy", "--out", str(tmp_path / "b")]  # fmt: skip
    assert "threshold must be in [0, 1)" in _refused(cli.main, ["bundle", "create", *files, "--threshold", "1.5"], capsys)
    # Checked as stored: a --max-size below the default min size is refused before any file is read.
    assert cli.main(["bundle", "create", *files, "--max-size", "500"]) == 2
    assert "--max-size 500 is below --min-size 640" in capsys.readouterr().err


# --- one threshold rule -----------------------------------------------------------------------------
def test_new_bundles_keep_faces_above_0_8():
    from img2pose_core.model import ModelSettings as FromModel
    from img2pose_core.settings import ModelSettings

    assert FromModel is ModelSettings and ModelSettings().threshold == 0.8


@pytest.fixture()
def predictor_thresholds(monkeypatch) -> list[float]:
    """The threshold of every Predictor the code under test makes (real predictors, recorded)."""
    from img2pose_core import predictor as module

    seen: list[float] = []

    class Recorded(module.Predictor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.threshold)

    monkeypatch.setattr(module, "Predictor", Recorded)
    return seen


@needs_golden
def test_predictor_takes_the_bundles_threshold(bundle_05, golden_bundle):
    from img2pose_core.predictor import Predictor

    small = {"device": "cpu", "min_size": 128, "max_size": 256}
    assert Predictor(str(bundle_05), **small).threshold == 0.5
    assert Predictor(str(bundle_05), threshold=0.3, **small).threshold == 0.3
    assert Predictor(str(golden_bundle), **small).threshold == 0.8  # made without a threshold


@needs_golden
def test_predict_command_takes_the_bundles_threshold(bundle_05, golden_bundle, golden_dir, predictor_thresholds, capsys):
    image = str(golden_dir / "images" / "astronaut.jpg")
    small = ["--device", "cpu", "--min-size", "128", "--max-size", "256"]
    assert cli.main(["predict", "--bundle", str(bundle_05), *small, image]) == 0
    scores = [f["score"] for f in json.loads(capsys.readouterr().out)["faces"]]
    assert cli.main(["predict", "--bundle", str(bundle_05), *small, "--threshold", "0.3", image]) == 0
    more = [f["score"] for f in json.loads(capsys.readouterr().out)["faces"]]
    assert cli.main(["predict", "--bundle", str(golden_bundle), *small, image]) == 0
    assert predictor_thresholds == [0.5, 0.3, 0.8]
    assert all(s > 0.5 for s in scores) and all(s > 0.3 for s in more) and len(more) >= len(scores)


@needs_golden
def test_render_command_takes_the_bundles_threshold(bundle_05, golden_dir, predictor_thresholds, tmp_path):
    image = str(golden_dir / "images" / "astronaut.jpg")
    small = ["--device", "cpu", "--min-size", "128", "--max-size", "256", "--out", str(tmp_path)]
    assert cli.main(["render", "--bundle", str(bundle_05), *small, image]) == 0
    assert cli.main(["render", "--bundle", str(bundle_05), *small, "--threshold", "0.3", image]) == 0
    assert predictor_thresholds == [0.5, 0.3]


@needs_golden
def test_job_takes_the_bundles_threshold(bundle_05, golden_bundle):
    """The job's parsed flags leave the threshold to the bundle; jobs/run.py resolves it with
    ``resolve_model_flags`` for its predictors and manifest (end to end: the next test)."""
    from img2pose_core.bundle import open_bundle
    from jobs.annotate import parse_args

    base = ["--input", "in/", "--output", "out/"]
    args = parse_args([*base, "--bundle", str(bundle_05)])
    assert args.threshold is None
    stored = open_bundle(bundle_05).settings
    assert resolve_model_flags(args, stored)["threshold"] == 0.5
    assert resolve_model_flags(parse_args([*base, "--threshold", "0.3"]), stored)["threshold"] == 0.3
    assert resolve_model_flags(args, open_bundle(golden_bundle).settings)["threshold"] == 0.8



@needs_golden
def test_predict_takes_folders(golden_bundle, golden_dir, tmp_path, capsys):
    picture = (golden_dir / "images" / "astronaut.jpg").read_bytes()
    (tmp_path / "photos" / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "photos" / "a.jpg").write_bytes(picture)
    (tmp_path / "photos" / "b" / "deeper" / "c.JPG").write_bytes(picture)
    (tmp_path / "photos" / "notes.txt").write_text("not an image, not listed")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(picture)
    small = ["--device", "cpu", "--min-size", "64", "--max-size", "128"]
    assert cli.main(["predict", "--bundle", str(golden_bundle), *small, str(tmp_path / "photos")]) == 0
    captured = capsys.readouterr()
    names = [json.loads(line)["image"] for line in captured.out.splitlines()]
    assert names == [str(tmp_path / "photos" / "a.jpg"), str(tmp_path / "photos" / "b" / "deeper" / "c.JPG")]
    assert "2/2 images processed" in captured.err
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", "--bundle", str(golden_bundle), *small, str(tmp_path / "empty")]) == 2
    assert "a folder without image files" in capsys.readouterr().err

"""The type check: mypy over ``img2pose_core/`` and ``jobs/`` with the project's configuration
(``[tool.mypy]`` in pyproject.toml) finds nothing.

Its exceptions are where they apply: a ``# type: ignore[code]`` with its reason on the same line,
where a library's types cannot say what the code does (``warn_unused_ignores`` reports one no longer needed).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_mypy_finds_no_type_errors():
    if importlib.util.find_spec("mypy") is None:
        # mypy is a test requirement, not an optional resource: its absence is a set-up error.
        pytest.fail("mypy is not installed: install the test extras (pip install -e '.[test]')")
    # No cache: CI starts clean, so a cache would only cost the time to write it (a few seconds of a
    # run of about 35 s CPU). mypy's parallel mode (-n) needs a cache and is not used.
    env = {k: v for k, v in os.environ.items() if k != "MYPY_NUM_WORKERS"}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--cache-dir", os.devnull],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, f"mypy found type errors (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"

"""The suite's temp folder (tests/conftest.py, suite_temp_folder) and pytest's retention of tmp_path
folders (pyproject.toml): what the tests and the processes they start write there is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_the_suite_and_its_processes_write_temp_files_to_the_suites_own_folder(suite_temp_folder, tmp_path):
    system_tmp = Path("/tmp").resolve()
    assert suite_temp_folder.name == "tmp" and suite_temp_folder.parent.name.startswith("i2pt-")
    assert Path(tempfile.gettempdir()) == suite_temp_folder == Path(os.environ["TMPDIR"])
    assert suite_temp_folder.resolve() != system_tmp
    assert Path(os.environ["IMG2POSE_CACHE"]).parent == suite_temp_folder.parent
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).parent == suite_temp_folder.parent
    code = "import tempfile, os; print(tempfile.gettempdir()); print(os.environ['IMG2POSE_CACHE'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(suite_temp_folder), os.environ["IMG2POSE_CACHE"]]  # a job started by a test inherits both
    # pytest's own folders stay apart from it (their retention is pytest's).
    assert suite_temp_folder not in tmp_path.parents


def test_passing_tests_keep_no_tmp_path(pytestconfig):
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) == 1

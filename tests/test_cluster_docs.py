"""docs/operations.md and the README's cluster commands: the runbook's topics, and commands in an
order that works on a fresh namespace."""

from __future__ import annotations

import re

import pytest

from cluster_files import OPERATIONS, README

def test_operations_doc_covers_the_runbook():
    text = OPERATIONS.read_text(encoding="utf-8")
    for needle in (
        "59144", "--skip-existing", "runs/", "docs/schema.md", "read_parquet", "g5.xlarge", "RayCronJob",
        "feature gate", "--concurrency", "cluster/runtime_env.yaml", "docs/performance.md",
    ):  # fmt: skip
        assert needle in text, f"docs/operations.md does not mention {needle!r}"


@pytest.mark.parametrize("doc", [README, OPERATIONS], ids=lambda p: p.name)
def test_service_account_is_applied_before_anything_that_names_it(doc):
    """KubeRay refuses an autoscaling cluster whose named ServiceAccount is missing
    (AutoscalerServiceAccountNotFound): in each doc, every command that makes a RayJob, RayCluster or
    RayCronJob comes after one that installs serviceaccount.yaml (directly or through `apply -k`)."""
    from doc_commands import shell_lines

    lines = [line for line in shell_lines(doc) if line.startswith("kubectl ")]
    installs = [i for i, line in enumerate(lines)
                if "serviceaccount.yaml" in line or re.search(r"apply -k cluster/kuberay/?(\s|$)", line)]  # fmt: skip
    makers = [i for i, line in enumerate(lines)
              if re.search(r"(create|apply) -f cluster/kuberay/(rayjob|raycluster|raycronjob)\.yaml", line)]  # fmt: skip
    assert makers, f"{doc.name}: no kubectl command that makes a Ray resource"
    assert installs and installs[0] < makers[0], [lines[i] for i in makers[:1]]


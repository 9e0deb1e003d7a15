"""docs/operations.md and the README's cluster commands: the runbook's topics, and commands in an
order that works on a fresh namespace."""

from __future__ import annotations

import re

import pytest

from cluster_files import OPERATIONS, README, fluent_bit_config, parse_classic_config, sections_named

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



def _github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_anchors(doc_text: str, link_pattern: str, target_text: str) -> list[str]:
    anchors = {_github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", target_text, flags=re.M)}
    return sorted({a for a in re.findall(link_pattern, doc_text) if a not in anchors})


def test_links_to_sections_of_the_runbook_resolve():
    ops = OPERATIONS.read_text(encoding="utf-8")
    assert not broken_anchors(ops, r"\]\(#([\w\-]+)\)", ops)
    assert not broken_anchors(README.read_text(encoding="utf-8"), r"\]\(docs/operations\.md#([\w\-]+)\)", ops)
    # Negative control: a link to a heading that does not exist.
    assert broken_anchors("[x](#no-such-section)", r"\]\(#([\w\-]+)\)", ops) == ["no-such-section"]


def test_runbook_says_where_the_ray_logs_land_and_how_pods_are_secured():
    """The Kubernetes section names the log folder the Fluent Bit ConfigMap really writes to, and the
    Pod security and identity set-up the manifests have."""
    _, text = fluent_bit_config()
    (s3,) = sections_named(parse_classic_config(text), "OUTPUT", "s3")
    folder = s3["s3_key_format"].split("${")[0]  # /img2pose/ray-logs/
    uri = f"s3://{s3['bucket']}{folder}"
    ops = OPERATIONS.read_text(encoding="utf-8")
    section = ops[ops.index("## Kubernetes (KubeRay v1.7)") :]
    section = section[: section.index("\n## ", 1)]
    for needle in (uri, "restricted", "img2pose-ray-worker", "submitterPodTemplate", "job-driver-", "Fluent Bit"):
        assert needle in section, f"docs/operations.md's Kubernetes section does not mention {needle!r}"
    assert uri in README.read_text(encoding="utf-8"), f"README.md does not say the Ray logs go to {uri}"

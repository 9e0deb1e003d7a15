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


def _section(doc, heading: str) -> str:
    """The text of a Markdown section, from its heading to the next heading of the same or a higher level."""
    text = doc.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", text[start + 1:], flags=re.M)][1:2]
    return text[start: start + 1 + ends[0]] if ends else text[start:]


def test_spot_snippet_makes_a_valid_launcher_config():
    """The documented spot lines, added where the docs say, give a config Ray's own validation accepts."""
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from cluster_files import AWS, load_one

    (block,) = re.findall(r"```yaml\n(.*?)```", _section(OPERATIONS, "### Spot GPU workers"), flags=re.S)
    snippet = yaml.safe_load(block)
    assert snippet["InstanceMarketOptions"]["MarketType"] == "spot"
    config = load_one(AWS)
    (gpu_type,) = [name for name, t in config["available_node_types"].items() if t["resources"].get("GPU")]
    assert f"`{gpu_type}`" in _section(OPERATIONS, "### Spot GPU workers"), "the docs name the GPU node type"
    config["available_node_types"][gpu_type]["node_config"].update(snippet)
    validate_config(prepare_config(copy.deepcopy(config)))
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert "InstanceMarketOptions" not in head, "the head stays on demand"


def test_network_commands_fill_every_node_type_of_aws_yaml(tmp_path):
    """The documented `sed` that writes the security group and subnet ids, run as written on a copy."""
    import shutil
    import subprocess

    import yaml

    from cluster_files import AWS
    from doc_commands import logical_lines

    section = _section(OPERATIONS, "## EC2 with the Ray cluster launcher")
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    (fill,) = [line for block in blocks for line in logical_lines(block) if line.startswith("sed -i") and "aws.yaml" in line]
    (tmp_path / "cluster").mkdir()
    shutil.copy(AWS, tmp_path / "cluster" / "aws.yaml")
    env = {"PATH": "/usr/bin:/bin", "SG": "sg-0a1b2c3d4e5f60718", "SUBNET": "subnet-0f1e2d3c4b5a69788"}
    subprocess.run(["bash", "-c", fill], cwd=tmp_path, env=env, check=True, timeout=30)
    filled = (tmp_path / "cluster" / "aws.yaml").read_text()
    assert "REPLACE_ME" not in filled
    for name, t in yaml.safe_load(filled)["available_node_types"].items():
        assert t["node_config"]["SecurityGroupIds"] == [env["SG"]], name
        assert t["node_config"]["SubnetIds"] == [env["SUBNET"]], name

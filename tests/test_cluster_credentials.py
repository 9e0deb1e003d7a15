"""No literal credential anywhere under cluster/ or in docs/operations.md; the Ray Pods get theirs
from workload identity."""

from __future__ import annotations

import yaml

from cluster_files import CLUSTER, OPERATIONS, RAY_SERVICE_ACCOUNT, RUNTIME_ENV, YAML_FILES, load_docs, load_one, objects_of, rel
from credential_scan import _SENSITIVE_ENV, _find_key, env_literals, literal_credentials


def test_no_literal_credentials_anywhere():
    files = [p for p in sorted(CLUSTER.rglob("*")) if p.is_file()] + [OPERATIONS]
    problems = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{rel(path)}: {p}" for p in literal_credentials(text)]
    for path in YAML_FILES:
        for doc in load_docs(path):
            problems += [f"{rel(path)}{p}" for p in env_literals(doc)]
            for label_key in ("runtimeEnvYAML",):
                for sub in _find_key(doc, label_key):
                    problems += [f"{rel(path)} {label_key}{p}" for p in env_literals(yaml.safe_load(sub))]
    env_vars = load_one(RUNTIME_ENV).get("env_vars", {})
    problems += [f"cluster/runtime_env.yaml env_vars.{k}" for k in env_vars if k in _SENSITIVE_ENV]
    assert not problems, "literal credentials:\n  " + "\n  ".join(problems)



def test_credential_scan_can_fail():
    """Negative control with AWS's documented example key pair (split so scanners of this file stay quiet)."""
    key_id, secret = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert literal_credentials(f"key: {key_id}")
    assert literal_credentials(f"aws_secret_access_key = {secret}")
    assert literal_credentials(f"    value: {secret}\n")
    assert not literal_credentials("image: registry.example.com/img2pose-ray:0.1.0 # AWS_SECRET_ACCESS_KEY from a Secret")
    pod = {"spec": {"containers": [{"name": "c", "env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}}
    assert env_literals(pod)
    assert not env_literals({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})
    assert env_literals({"kind": "Secret", "stringData": {"AWS_ACCESS_KEY_ID": "x"}})


def test_workload_identity_service_account():
    accounts = {doc["metadata"]["name"]: doc for _, doc in objects_of("ServiceAccount")}
    assert RAY_SERVICE_ACCOUNT in accounts, f"no ServiceAccount {RAY_SERVICE_ACCOUNT} for the Ray Pods"
    annotations = accounts[RAY_SERVICE_ACCOUNT]["metadata"].get("annotations", {})
    assert "eks.amazonaws.com/role-arn" in annotations, "annotate the Ray ServiceAccount for IRSA"


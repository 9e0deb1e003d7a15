"""`kubectl apply -k cluster/kuberay/` as kubectl renders it, without a cluster: `kubectl kustomize`
runs for real and its output is validated, the built-in objects against Kubernetes' own strict schemas
(kubernetes-validate), the RayJob that the generated ConfigMap carries against the KubeRay CRD.

The one-off manifests (rayjob.yaml, raycluster.yaml, raycronjob.yaml, serviceaccount.yaml) are not
rendered here: `kubectl create --dry-run=client -f` still asks an API server for the kinds' REST
mapping ("couldn't get current server API group list"), so test_cluster_manifests.py validates those
files directly with the same schemas.

Only the kubectl-dependent tests skip where kubectl is not installed (kubectl 1.32 bundles kustomize
v5.5); rendering takes about 0.1 s.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster_files import KUBERAY, PREREQUISITES, load_docs, loads_docs, rel
from job_commands import configmap_files, kustomization
from k8s_schemas import K8S_VERSIONS, crd_errors, is_builtin, k8s_errors, needs_crds

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed here: `kubectl kustomize cluster/kuberay` cannot be rendered"
)
NIGHTLY_CONFIGMAP = "img2pose-nightly-rayjob"


def kustomize(folder: Path) -> tuple:
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed ({result.returncode}): {result.stderr.strip()}")
    return loads_docs(result.stdout)


@functools.cache
def rendered() -> tuple:
    return kustomize(KUBERAY)


def by_kind(docs) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def generated_configmap(docs) -> dict:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(NIGHTLY_CONFIGMAP + "-")]
    return cm


@needs_kubectl
def test_kustomize_renders_the_schedule_and_the_ray_prerequisites():
    docs = rendered()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    # serviceaccount.yaml comes through whole: what the Ray Pods name exists before the first RayJob.
    prerequisites = {(d["kind"], d["metadata"]["name"]) for d in load_docs(PREREQUISITES)}
    assert prerequisites <= names, prerequisites - names
    kinds = by_kind(docs)
    assert [c["metadata"]["name"] for c in kinds["CronJob"]] == ["img2pose-nightly"]
    assert not [d for d in docs if d["apiVersion"].startswith("ray.io/")], "apply -k must not create a Ray resource itself"
    # The generated ConfigMap holds rayjob.yaml verbatim, under a content-hash name that kustomize
    # wrote into the CronJob's volume (so a changed rayjob.yaml rolls out with the next apply).
    cm = generated_configmap(docs)
    files = configmap_files(NIGHTLY_CONFIGMAP)
    assert set(cm["data"]) == set(files)
    for key, path in files.items():
        assert cm["data"][key] == path.read_text(encoding="utf-8"), f"ConfigMap key {key} differs from {rel(path)}"
    pod = kinds["CronJob"][0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volumes = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert volumes == [cm["metadata"]["name"]], f"the CronJob mounts {volumes}, kustomize generated {cm['metadata']['name']}"


@needs_kubectl
def test_kustomize_changes_nothing_but_the_generated_name():
    """Every rendered object from a listed file is that file's object, except the ConfigMap reference."""
    sources = {}
    for entry in kustomization()["resources"]:
        for doc in load_docs(KUBERAY / entry):
            sources[(doc["kind"], doc["metadata"]["name"])] = doc
    generated = generated_configmap(rendered())["metadata"]["name"]
    for doc in rendered():
        key = (doc["kind"], doc["metadata"]["name"])
        if doc["metadata"]["name"] == generated:
            continue
        assert key in sources, f"kustomize rendered {key}, which no listed file defines"
        expected = copy.deepcopy(sources[key])
        if doc["kind"] == "CronJob":
            for volume in expected["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]:
                if volume.get("configMap", {}).get("name") == NIGHTLY_CONFIGMAP:
                    volume["configMap"]["name"] = generated
        assert doc == expected, f"kustomize changed {key}"


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(version):
    docs = rendered()
    assert docs
    for doc in docs:
        assert is_builtin(doc), f"no Kubernetes schema for rendered {doc['apiVersion']} {doc['kind']}"
        errors = k8s_errors(doc, version)
        assert not errors, f"rendered {doc['kind']} {doc['metadata']['name']}: {errors}"


@needs_kubectl
@needs_crds
def test_rendered_configmap_creates_a_valid_rayjob():
    """What the launcher's `kubectl create -f` reads each night: a RayJob valid against its CRD."""
    cm = generated_configmap(rendered())
    jobs = [doc for text in cm["data"].values() for doc in loads_docs(text)]
    assert [j["kind"] for j in jobs] == ["RayJob"]
    errors = crd_errors(jobs[0])
    assert not errors, errors
    assert "generateName" in jobs[0]["metadata"]


@needs_kubectl
def test_render_and_validation_can_fail(tmp_path):
    """Negative controls: kustomize refuses a kustomization naming a missing file, and a rendered object
    broken by one misspelt field no longer validates."""
    for path in KUBERAY.iterdir():
        shutil.copy(path, tmp_path / path.name)
    text = (tmp_path / "kustomization.yaml").read_text(encoding="utf-8")
    (tmp_path / "kustomization.yaml").write_text(text.replace("- nightly-cronjob.yaml", "- no-such-file.yaml"), encoding="utf-8")
    with pytest.raises(RuntimeError, match="no-such-file"):
        kustomize(tmp_path)
    (cron,) = by_kind(rendered())["CronJob"]
    broken = copy.deepcopy(cron)
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAcountName"] = "x"
    assert k8s_errors(broken)

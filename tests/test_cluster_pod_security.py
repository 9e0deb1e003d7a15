"""Every Pod the manifests make can run in a namespace labelled
pod-security.kubernetes.io/enforce=restricted: the Ray head (with the autoscaler container KubeRay
adds), every worker group (with KubeRay's wait-gcs-ready init container), the RayJob's submitter Pod
(K8sJobMode) and the nightly launcher. The rules checked and the KubeRay behaviour modelled, with the
source files it was read from, are listed in tests/pod_security.py. In short, KubeRay's additions:

- the head's "autoscaler" container: KubeRay gives it autoscalerOptions.securityContext and no other
  (common/pod.go BuildAutoscalerContainer, mergeAutoscalerOverrides);
- each worker's "wait-gcs-ready" init container: a copy of the Ray container's securityContext
  (common/pod.go DefaultWorkerPodTemplate);
- the submitter Pod: spec.submitterPodTemplate, or KubeRay's default with no securityContext at all
  (common/job.go GetSubmitterTemplate, GetDefaultSubmitterContainer);
- the Pod-level securityContext reaches all of them, being the Pod's.
"""

from __future__ import annotations

import copy

import pytest

from cluster_files import cluster_specs, rayjob_specs
from job_commands import CRONJOBS
from k8s_schemas import k8s_errors
from pod_security import (
    kuberay_head_pod, kuberay_model_assumptions, kuberay_submitter_pod, kuberay_worker_pod,
    numeric_user_problems, restricted_violations,
)  # fmt: skip

CLUSTER_SPECS = cluster_specs()


def made_pods() -> list[tuple[str, dict, dict]]:
    """(label, Pod spec, Pod annotations) of every Pod the manifests make, KubeRay's additions included."""
    out = []
    for label, spec in CLUSTER_SPECS:
        head = spec["headGroupSpec"]["template"]
        out.append((f"{label} head", kuberay_head_pod(spec), head.get("metadata", {}).get("annotations", {})))
        for group in spec.get("workerGroupSpecs", []):
            annotations = group["template"].get("metadata", {}).get("annotations", {})
            out.append((f"{label} {group['groupName']}", kuberay_worker_pod(group), annotations))
    for label, spec in rayjob_specs():
        template = spec.get("submitterPodTemplate") or {}
        out.append((f"{label} submitter", kuberay_submitter_pod(spec), template.get("metadata", {}).get("annotations", {})))
    for label, cron in CRONJOBS:
        template = cron["spec"]["jobTemplate"]["spec"]["template"]
        out.append((f"{label} launcher", template["spec"], template.get("metadata", {}).get("annotations", {})))
    return out


PODS = made_pods()


def test_the_model_covers_what_kuberay_adds():
    """The model of tests/pod_security.py leaves out KubeRay features these manifests do not use; turning
    one on (or another submission mode) must come with the model's update."""
    assert CLUSTER_SPECS and rayjob_specs() and CRONJOBS
    for label, spec in CLUSTER_SPECS:
        assert not kuberay_model_assumptions(spec), f"{label}: {kuberay_model_assumptions(spec)} not modelled"
    for label, spec in rayjob_specs():
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode", f"{label}: only K8sJobMode is modelled"
    names = {label: [c["name"] for c in pod.get("initContainers", []) + pod["containers"]] for label, pod, _ in PODS}
    heads = [n for label, n in names.items() if label.endswith(" head")]
    assert heads and all("autoscaler" in n for n in heads), "every head gets KubeRay's autoscaler container"
    workers = [n for label, n in names.items() if label.endswith((" cpu-decode", " gpu"))]
    assert workers and all("wait-gcs-ready" in n for n in workers), "every worker gets KubeRay's wait-gcs-ready"


@pytest.mark.parametrize("label,pod,annotations", PODS, ids=[label for label, _, _ in PODS])
def test_pod_meets_the_restricted_pod_security_standard(label, pod, annotations):
    violations = restricted_violations(pod, annotations)
    assert not violations, f"{label}:\n  " + "\n  ".join(violations)
    problems = numeric_user_problems(pod)
    assert not problems, f"{label}:\n  " + "\n  ".join(problems)


def shared_user_problems(pod: dict) -> list[str]:
    """The projected ServiceAccount token (IRSA, Pod Identity) is mode 0600: Kubernetes gives it to the
    Pod's runAsUser only when all containers run as that one user (KEP "svcacct-token-volumes", file
    permission, Kubernetes 1.19+). The Ray Pods run as the image's ray user, uid 1000 and gid 100."""
    pod_sc = pod.get("securityContext") or {}
    users = {(c.get("securityContext") or {}).get("runAsUser", pod_sc.get("runAsUser")) for _, c in _containers(pod)}
    groups = {(c.get("securityContext") or {}).get("runAsGroup", pod_sc.get("runAsGroup")) for _, c in _containers(pod)}
    problems = []
    if users != {1000}:
        problems.append(f"containers run as uids {users}, not all as the Ray image's uid 1000")
    if groups != {100}:
        problems.append(f"containers run as gids {groups}, not all as the Ray image's gid 100 (users)")
    return problems


def _containers(pod: dict) -> list[tuple[str, dict]]:
    return [(c["name"], c) for field in ("initContainers", "containers") for c in pod.get(field, [])]


RAY_PODS = [(label, pod) for label, pod, _ in PODS if not label.endswith(" launcher")]


@pytest.mark.parametrize("label,pod", RAY_PODS, ids=[label for label, _ in RAY_PODS])
def test_ray_pods_run_as_the_image_user_in_every_container(label, pod):
    problems = shared_user_problems(pod)
    assert not problems, f"{label}: {problems}"


def test_shared_user_check_can_fail():
    (_, pod), *_ = RAY_PODS
    other = copy.deepcopy(pod)
    other["containers"][-1].setdefault("securityContext", {})["runAsUser"] = 2000
    assert shared_user_problems(other)
    other = copy.deepcopy(pod)
    del other["securityContext"]["runAsGroup"]
    assert shared_user_problems(other)


@pytest.mark.parametrize("label,pod,annotations", PODS, ids=[label for label, _, _ in PODS])
def test_made_pod_is_a_valid_kubernetes_pod(label, pod, annotations):
    """The Pods as modelled (KubeRay's containers added) validate against Kubernetes' strict Pod schema,
    so a misspelt securityContext field cannot pass the rules above by being ignored."""
    errors = k8s_errors({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "img2pose-check"}, "spec": pod})
    assert not errors, f"{label}: {errors}"


def _pod(label_end: str) -> dict:
    return copy.deepcopy(next(pod for label, pod, _ in PODS if label.endswith(label_end)))


def test_restricted_check_can_fail():
    """Negative controls, one per kind of mistake, including the ones KubeRay's additions would make."""
    # KubeRay's default submitter (no submitterPodTemplate) has no securityContext at all.
    (_, job_spec), *_ = rayjob_specs()
    default = kuberay_submitter_pod({k: v for k, v in job_spec.items() if k != "submitterPodTemplate"})
    rules = {v.split()[0] for v in restricted_violations(default)}
    assert {"R2", "R3", "R5", "R6"} <= rules, rules
    assert numeric_user_problems(default)

    # Without autoscalerOptions.securityContext the autoscaler KubeRay adds keeps its capabilities.
    (_, spec), *_ = CLUSTER_SPECS
    bare = copy.deepcopy(spec)
    del bare["autoscalerOptions"]["securityContext"]
    violations = restricted_violations(kuberay_head_pod(bare))
    assert violations and all("containers[autoscaler]" in v for v in violations), violations

    # wait-gcs-ready copies the Ray container's securityContext: without one, both fail.
    bare = copy.deepcopy(spec)
    del bare["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["securityContext"]
    where = {v.split()[1] for v in restricted_violations(kuberay_worker_pod(bare["workerGroupSpecs"][0]))}
    assert {"initContainers[wait-gcs-ready]:", "containers[ray-worker]:"} <= where, where

    pod = _pod(" head")
    del pod["securityContext"]["seccompProfile"]
    assert any(v.startswith("R5") for v in restricted_violations(pod))
    pod = _pod(" head")
    pod["securityContext"]["runAsNonRoot"] = False
    assert any(v.startswith("R3") for v in restricted_violations(pod))
    pod = _pod(" head")
    del pod["securityContext"]["runAsUser"]
    assert numeric_user_problems(pod)
    pod = _pod(" head")
    pod["containers"][0]["securityContext"]["runAsUser"] = 0
    assert any(v.startswith("R4") for v in restricted_violations(pod))
    pod = _pod(" head")
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert {"B4", "R6"} <= {v.split()[0] for v in restricted_violations(pod)}
    pod = _pod(" head")
    pod["containers"][0]["securityContext"]["privileged"] = True
    assert any(v.startswith("B3") for v in restricted_violations(pod))
    pod = _pod(" head")
    pod["hostNetwork"] = True
    pod["containers"][0]["ports"][0]["hostPort"] = 6379
    assert {"B2", "B6"} <= {v.split()[0] for v in restricted_violations(pod)}
    pod = _pod(" head")
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/var/log"}})
    assert {"B5", "R1"} <= {v.split()[0] for v in restricted_violations(pod)}
    pod = _pod(" head")
    pod["securityContext"]["sysctls"] = [{"name": "kernel.msgmax", "value": "1"}]
    assert any(v.startswith("B11") for v in restricted_violations(pod))
    assert any(v.startswith("B7") for v in restricted_violations(_pod(" head"), {
        "container.apparmor.security.beta.kubernetes.io/ray-head": "unconfined"}))

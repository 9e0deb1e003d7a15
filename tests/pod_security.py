"""The Pod Security Standard "restricted" profile as a check of Pod specs, and the Pods the manifests
make, including what KubeRay adds to them.

The rules, from kubernetes.io's "Pod Security Standards" page (Restricted = everything of Baseline,
plus the Restricted controls); "containers" means containers, initContainers and ephemeralContainers:

Baseline
  B1 HostProcess: securityContext.windowsOptions.hostProcess (Pod and containers) unset or false.
  B2 Host namespaces: hostNetwork, hostPID, hostIPC unset or false.
  B3 Privileged containers: securityContext.privileged unset or false.
  B4 Capabilities: capabilities.add only from AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
     MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT.
  B5 HostPath volumes: no volume with hostPath.
  B6 Host ports: ports[*].hostPort unset or 0.
  B7 AppArmor: appArmorProfile.type (Pod and containers) unset, RuntimeDefault or Localhost; the
     container.apparmor.security.beta.kubernetes.io/* annotations unset, runtime/default or localhost/*.
  B8 SELinux: seLinuxOptions.type unset or one of container_t, container_init_t, container_kvm_t,
     container_engine_t; seLinuxOptions.user and .role unset.
  B9 /proc mount type: securityContext.procMount unset or Default.
  B10 Seccomp: seccompProfile.type (Pod and containers) not Unconfined.
  B11 Sysctls: securityContext.sysctls[*].name only from the safe set.
Restricted
  R1 Volume types: every volume is configMap, csi, downwardAPI, emptyDir, ephemeral,
     persistentVolumeClaim, projected or secret.
  R2 Privilege escalation: every container sets allowPrivilegeEscalation: false.
  R3 Running as non-root: runAsNonRoot true on the Pod, or on every container (a container may not
     set it false).
  R4 Running as non-root user: runAsUser (Pod and containers) unset or non-zero.
  R5 Seccomp: seccompProfile.type RuntimeDefault or Localhost on the Pod, or on every container.
  R6 Capabilities: every container drops ALL; capabilities.add only NET_BIND_SERVICE.

One more check that is not a rule of the standard but decides whether R3 works: the kubelet enforces
runAsNonRoot against the image's USER and refuses a non-numeric one ("cannot verify user is non-root").
The Ray image runs as the named user "ray" (rayproject/ray, cluster/Dockerfile), so every container
must get a numeric runAsUser from its Pod or itself (`numeric_user_problems`).
"""

from __future__ import annotations

import copy

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SELINUX_TYPES = {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def all_containers(pod: dict) -> list[tuple[str, dict]]:
    out = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        out += [(f"{field}[{c['name']}]", c) for c in pod.get(field, [])]
    return out


def restricted_violations(pod: dict, annotations: dict | None = None) -> list[str]:
    """Every violation of the Restricted profile (Baseline included) by a Pod spec, as 'rule where: why'."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = all_containers(pod)
    scs = [(where, c.get("securityContext") or {}) for where, c in containers]
    for where, sc in [("pod", psc)] + scs:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"B1 {where}: hostProcess")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"B7 {where}: appArmorProfile {apparmor}")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type") not in (None, "", *SELINUX_TYPES):
            out.append(f"B8 {where}: seLinuxOptions.type {selinux['type']}")
        if selinux.get("user") or selinux.get("role"):
            out.append(f"B8 {where}: seLinuxOptions.user/role")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"B10 {where}: seccompProfile Unconfined")
        if sc.get("runAsUser") == 0:
            out.append(f"R4 {where}: runAsUser 0")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"B2 pod: {field}")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"B7 annotation {key}: {value}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"B11 pod: sysctl {sysctl['name']}")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"B5 volume {volume['name']}: hostPath")
        if not any(volume.get(kind) is not None for kind in VOLUME_TYPES):
            kinds = sorted(set(volume) - {"name"})
            out.append(f"R1 volume {volume['name']}: type {kinds} not allowed")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in SECCOMP_OK
    for (where, container), (_, sc) in zip(containers, scs):
        if sc.get("privileged"):
            out.append(f"B3 {where}: privileged")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"B4 {where}: adds {sorted(added - BASELINE_CAPABILITIES)}")
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"R6 {where}: adds {sorted(added - {'NET_BIND_SERVICE'})}")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"R6 {where}: does not drop ALL capabilities")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"B6 {where}: hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"B9 {where}: procMount {sc['procMount']}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"R2 {where}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"R3 {where}: not runAsNonRoot")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_OK and not (seccomp is None and pod_seccomp):
            out.append(f"R5 {where}: no RuntimeDefault/Localhost seccomp profile")
    return out


def numeric_user_problems(pod: dict) -> list[str]:
    """Containers whose user the kubelet could not check against runAsNonRoot without a numeric runAsUser."""
    pod_user = (pod.get("securityContext") or {}).get("runAsUser")
    out = []
    for where, container in all_containers(pod):
        user = (container.get("securityContext") or {}).get("runAsUser", pod_user)
        if not isinstance(user, int) or user <= 0:
            out.append(f"{where}: no numeric non-root runAsUser (the image's USER may be a name, e.g. 'ray')")
    return out


# --------------------------------------------------------------------------- what KubeRay makes
#
# Read in KubeRay's source (ray-project/kuberay, ray-operator/controllers/ray/), the operator of
# v1.7 and its main branch after it, which the CRDs in ../shared/kuberay-crds come from:
#
# - common/pod.go DefaultHeadPodTemplate: with enableInTreeAutoscaling it appends the container
#   "autoscaler" (BuildAutoscalerContainer: the head's image, no securityContext), then
#   mergeAutoscalerOverrides copies autoscalerOptions.securityContext (and resources, env,
#   volumeMounts ...) onto it; the Pod's serviceAccountName is set to the head's.
# - common/pod.go DefaultWorkerPodTemplate: unless the operator runs with
#   ENABLE_INIT_CONTAINER_INJECTION=false, it appends the init container "wait-gcs-ready" with
#   SecurityContext = the Ray container's securityContext (DeepCopy), its env and volumeMounts.
# - common/pod.go BuildPod: adds the emptyDir volumes "shared-mem" (/dev/shm, when not mounted) and,
#   on an autoscaling head, "ray-logs" (/tmp/ray, reused when the Pod already has it) to the Ray and
#   autoscaler containers.
# - common/job.go GetSubmitterTemplate / GetDefaultSubmitterContainer and
#   rayjob_controller.go getSubmitterTemplate: in K8sJobMode the submitter Job's Pod is
#   spec.submitterPodTemplate when given (its first container is the submitter; command, args and env
#   are filled in), otherwise a Pod with one container "ray-job-submitter" of the head's image and no
#   securityContext, restartPolicy Never.
# Not modelled, because these manifests turn none of it on (`kuberay_model_assumptions` checks that):
# GCS fault tolerance (a Redis clean-up Job, an embedded-store volume), TLS (init container
# "wait-for-tls-ip-san", which would copy the Ray container's securityContext too), the history-server
# collector sidecar, SidecarMode submission (a submitter container in the head Pod), and the operator's
# own headSidecarContainers/workerSidecarContainers configuration (empty unless its Helm values set it).
# Admission webhooks of the cluster (EKS Pod Identity, IRSA) add only a projected token volume and env.


def kuberay_model_assumptions(spec: dict) -> list[str]:
    """Cluster options that would make KubeRay add Pods or containers this model does not have."""
    out = []
    if spec.get("gcsFaultToleranceOptions"):
        out.append("gcsFaultToleranceOptions (Redis clean-up Job, storage volume)")
    if (spec.get("tlsOptions") or {}).get("enabled"):
        out.append("tlsOptions.enabled (init container wait-for-tls-ip-san)")
    if (spec.get("historyServerOptions") or {}).get("collectorOptions"):
        out.append("historyServerOptions.collectorOptions (collector sidecar)")
    return out


def kuberay_head_pod(spec: dict) -> dict:
    """The head Pod spec KubeRay builds from a RayCluster spec, as far as Pod security is concerned."""
    pod = copy.deepcopy(spec["headGroupSpec"]["template"]["spec"])
    ray = pod["containers"][0]
    _add_empty_dir(pod, ray, "shared-mem", "/dev/shm")
    if spec.get("enableInTreeAutoscaling"):
        options = spec.get("autoscalerOptions") or {}
        autoscaler = {"name": "autoscaler", "image": options.get("image", ray["image"])}
        if options.get("securityContext") is not None:
            autoscaler["securityContext"] = copy.deepcopy(options["securityContext"])
        pod["containers"].append(autoscaler)
        _add_empty_dir(pod, ray, "ray-logs", "/tmp/ray")
        _add_empty_dir(pod, autoscaler, "ray-logs", "/tmp/ray")
    return pod


def kuberay_worker_pod(group: dict) -> dict:
    """A worker Pod spec KubeRay builds from a worker group (init container injection on, the default)."""
    pod = copy.deepcopy(group["template"]["spec"])
    ray = pod["containers"][0]
    wait = {"name": "wait-gcs-ready", "image": ray["image"], "volumeMounts": copy.deepcopy(ray.get("volumeMounts", []))}
    if ray.get("securityContext") is not None:
        wait["securityContext"] = copy.deepcopy(ray["securityContext"])
    pod.setdefault("initContainers", []).append(wait)
    _add_empty_dir(pod, ray, "shared-mem", "/dev/shm")
    return pod


def kuberay_submitter_pod(job_spec: dict) -> dict:
    """The submitter Job's Pod spec of a K8sJobMode RayJob spec."""
    template = job_spec.get("submitterPodTemplate")
    if template is not None:
        return copy.deepcopy(template["spec"])
    head_image = job_spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    return {"restartPolicy": "Never", "containers": [{"name": "ray-job-submitter", "image": head_image}]}


def _add_empty_dir(pod: dict, container: dict, name: str, path: str) -> None:
    # KubeRay's addEmptyDir: nothing when the container already mounts the path; the volume is reused by name.
    if any(m["mountPath"] == path for m in container.get("volumeMounts", [])):
        return
    if not any(v["name"] == name for v in pod.get("volumes", [])):
        pod.setdefault("volumes", []).append({"name": name, "emptyDir": {}})
    container.setdefault("volumeMounts", []).append({"name": name, "mountPath": path})

"""Ray's logs outlive the cluster: every Ray Pod (head and workers, in every cluster definition)
carries a Fluent Bit sidecar that reads the Pod's /tmp/ray from the volume the Ray container writes
and uploads it to object storage under the job's output prefix, keyed by cluster and Pod name
(Ray's documented KubeRay log-persistence pattern, with Fluent Bit's S3 output).

KubeRay facts these checks rest on (ray-operator/controllers/ray/common/pod.go): the Ray container is
the first of each Pod (utils.RayContainerIndex = 0), and on the head KubeRay mounts a volume named
"ray-logs" at /tmp/ray in its autoscaler container, reusing the Pod's volume of that name if there is
one (addEmptyDir): naming ours "ray-logs" puts the autoscaler's logs in the shipped folder too.
"""

from __future__ import annotations

import copy
import re

import pytest

from cluster_files import (
    cluster_specs, fluent_bit_config, objects_of, parse_classic_config, ray_pod_specs, sections_named,
)  # fmt: skip
from job_commands import _annotate_argv, parse_job_args

LOG_DIR = "/tmp/ray"
LOG_VOLUME = "ray-logs"
SIDECAR = "fluent-bit"

CLUSTER_SPECS = cluster_specs()


def sidecar_problems(pod: dict, config_map: str, config_text: str) -> list[str]:
    """Why a Ray Pod spec would not ship its logs with the Fluent Bit sidecar ([] when it would)."""
    containers = {c["name"]: c for c in pod["containers"]}
    ray = pod["containers"][0]
    sidecar = containers.get(SIDECAR)
    if sidecar is None:
        return [f"no {SIDECAR} container"]
    problems = []
    image = sidecar["image"]
    if not re.fullmatch(r"[\w.\-/]*fluent-bit:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image):
        problems.append(f"{image}: pin Fluent Bit by an exact version tag (x.y.z)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    ray_logs = [m for m in ray.get("volumeMounts", []) if m["mountPath"] == LOG_DIR]
    if [m["name"] for m in ray_logs] != [LOG_VOLUME] or "emptyDir" not in volumes.get(LOG_VOLUME, {}):
        problems.append(f"the Ray container must write {LOG_DIR} to the emptyDir volume {LOG_VOLUME!r}")
    if not any(m["name"] == LOG_VOLUME and m["mountPath"] == LOG_DIR for m in sidecar.get("volumeMounts", [])):
        problems.append(f"the sidecar must read {LOG_VOLUME!r} at {LOG_DIR}")
    config_mounts = [
        m for m in sidecar.get("volumeMounts", [])
        if volumes.get(m["name"], {}).get("configMap", {}).get("name") == config_map
    ]  # fmt: skip
    default_config = "/fluent-bit/etc/fluent-bit.conf"  # where the image's command reads it
    if not any(m["mountPath"] == default_config and m.get("subPath") == "fluent-bit.conf" for m in config_mounts):
        problems.append(f"mount ConfigMap {config_map}'s fluent-bit.conf at {default_config}")
    defined = {e["name"] for e in sidecar.get("env", [])}
    for var in sorted(set(re.findall(r"\$\{(\w+)\}", config_text)) - defined):
        problems.append(f"fluent-bit.conf uses ${{{var}}}, which the sidecar does not define")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in sidecar.get("env", [])}
    if env.get("POD_NAME") != "metadata.name":
        problems.append("POD_NAME must come from the downward API (metadata.name)")
    if env.get("RAY_CLUSTER_NAME") != "metadata.labels['ray.io/cluster']":
        problems.append("RAY_CLUSTER_NAME must come from the label ray.io/cluster that KubeRay sets")
    # The S3 output buffers in store_dir: on a read-only root it must be a mounted volume.
    for output in sections_named(parse_classic_config(config_text), "OUTPUT", "s3"):
        store = output.get("store_dir", "/tmp/fluent-bit/s3")
        if sidecar.get("securityContext", {}).get("readOnlyRootFilesystem") and not any(
            store.startswith(m["mountPath"].rstrip("/") + "/") and not m.get("readOnly") for m in sidecar.get("volumeMounts", [])
        ):
            problems.append(f"store_dir {store} is not on a writable volume of the sidecar")
    refs = {e["secretRef"]["name"] for e in sidecar.get("envFrom", []) if "secretRef" in e}
    if "img2pose-s3" not in refs:
        problems.append("the sidecar should read the optional Secret img2pose-s3 like the Ray container")
    return problems


RAY_PODS = [(f"{label} {group}", pod) for label, spec in CLUSTER_SPECS for group, pod in ray_pod_specs(spec)]


@pytest.mark.parametrize("label,pod", RAY_PODS, ids=[label for label, _ in RAY_PODS])
def test_every_ray_pod_ships_its_logs(label, pod):
    config_map, text = fluent_bit_config()
    problems = sidecar_problems(pod, config_map, text)
    assert not problems, f"{label}:\n  " + "\n  ".join(problems)


def test_sidecar_check_can_fail():
    """Negative controls: a Pod without the sidecar, one whose Ray container keeps /tmp/ray to itself,
    a latest tag and an undefined environment variable are all reported."""
    config_map, text = fluent_bit_config()
    (_, pod), *_ = RAY_PODS
    assert not sidecar_problems(pod, config_map, text)
    no_sidecar = copy.deepcopy(pod)
    no_sidecar["containers"] = no_sidecar["containers"][:1]
    assert sidecar_problems(no_sidecar, config_map, text) == [f"no {SIDECAR} container"]
    private_logs = copy.deepcopy(pod)
    ray = private_logs["containers"][0]
    ray["volumeMounts"] = [m for m in ray["volumeMounts"] if m["mountPath"] != LOG_DIR]
    assert sidecar_problems(private_logs, config_map, text)
    latest = copy.deepcopy(pod)
    next(c for c in latest["containers"] if c["name"] == SIDECAR)["image"] = "fluent/fluent-bit:latest"
    assert sidecar_problems(latest, config_map, text)
    assert sidecar_problems(pod, config_map, text + "\n    Undefined ${NOT_SET}\n")


def output_prefix() -> tuple[str, str]:
    """(bucket, key prefix) of the RayJob's --output, the folder the logs must land under."""
    (_, rayjob), *_ = objects_of("RayJob")
    args, message = parse_job_args(_annotate_argv(rayjob["spec"]["entrypoint"]))
    assert args is not None, message
    match = re.fullmatch(r"s3://([^/]+)/(.*)", args.output)
    assert match, f"--output {args.output} is not an s3:// URI"
    return match.group(1), match.group(2).rstrip("/") + "/"


def log_destination_problems(config_text: str) -> list[str]:
    config = parse_classic_config(config_text)
    problems = []
    tails = sections_named(config, "INPUT", "tail")
    if not any(t.get("path") == f"{LOG_DIR}/session_latest/logs/*" for t in tails):
        problems.append(f"no tail input of {LOG_DIR}/session_latest/logs/* (Ray's log folder of the running session)")
    outputs = sections_named(config, "OUTPUT", "s3")
    if len(outputs) != 1:
        return problems + [f"expected one s3 output, found {len(outputs)}"]
    (s3,) = outputs
    bucket, prefix = output_prefix()
    if s3.get("bucket") != bucket:
        problems.append(f"bucket {s3.get('bucket')} is not the --output bucket {bucket}")
    key = s3.get("s3_key_format", "")
    if not key.startswith(f"/{prefix}ray-logs/"):
        problems.append(f"s3_key_format {key} is not under the --output prefix: /{prefix}ray-logs/...")
    if "${POD_NAME}" not in key or "${RAY_CLUSTER_NAME}" not in key:
        problems.append("the key must name the Ray cluster and the Pod (${RAY_CLUSTER_NAME}, ${POD_NAME})")
    if s3.get("use_put_object", "").lower() == "on" and "$UUID" not in key:
        problems.append("with use_put_object the key needs $UUID (one object per upload)")
    return problems


def test_logs_land_under_the_job_output_prefix():
    """The logs go to <--output>/ray-logs/<cluster>/<pod>/: the same bucket and IAM grant as the job's
    output, one folder per Pod, so the head's job-driver logs are found from the RayJob's cluster."""
    _, text = fluent_bit_config()
    problems = log_destination_problems(text)
    assert not problems, problems
    # Negative controls: another bucket, a key without the Pod name, no tail input.
    assert log_destination_problems(text.replace("bucket                annotations", "bucket                other"))
    assert log_destination_problems(text.replace("${POD_NAME}", "pod"))
    assert log_destination_problems(text.replace("Name              tail", "Name              dummy"))


def test_fluent_bit_image_is_the_same_everywhere():
    images = {c["image"] for _, pod in RAY_PODS for c in pod["containers"] if c["name"] == SIDECAR}
    assert len(images) == 1, f"the sidecars name different images: {images}"

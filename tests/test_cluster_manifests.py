"""The manifests under cluster/: parsed, validated, and one definition of one cluster.

- every YAML file parses (multi-document files too, duplicate keys refused);
- every KubeRay resource validates against the OpenAPI v3 schema of the real CRD of its apiVersion
  (only these tests skip without ../shared/kuberay-crds), unknown fields refused as
  `kubectl --validate=strict` would; the CronJob and its RBAC against small hand-made schemas;
  cluster/aws.yaml against Ray's own cluster-launcher schema;
- the GPU pool is pre-provisioned and the job's --concurrency matches it; the cluster spec, the
  RayJob, the RayCronJob and the nightly CronJob's RayJob are one definition; the RayJob's
  runtimeEnvYAML is cluster/runtime_env.yaml; its lifecycle releases a stuck cluster.

No network, no Docker, no Kubernetes: a few seconds.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from cluster_files import (
    AWS, CLUSTER, DOCKERFILE, KUBERAY, OPERATIONS, RAY_SERVICE_ACCOUNT, RUNTIME_ENV, S3_SECRET,
    YAML_FILES, cluster_specs, gpu_groups, image_workdir, k8s_objects, load_docs, load_one, objects_of,
    pinned, pod_gpus, ray_containers, rayjob_specs, rel,
)  # fmt: skip
from job_commands import CRONJOBS, _annotate_argv, cronjob_rayjob_files, kustomization, parse_job_args
from k8s_schemas import CRD_FILES, CRONJOB_SCHEMA, RBAC_SCHEMAS, crd_errors, needs_crds, schema_errors

# GPUs per instance of the EC2 types aws.yaml may name (cross-check of its explicit GPU resource).
EC2_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "g6.xlarge": 1, "g6.2xlarge": 1, "g6.12xlarge": 4}


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses(path):
    docs = load_docs(path)
    assert docs, f"{rel(path)} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: a document is a {type(doc).__name__}, not a mapping"


def test_the_expected_files_exist():
    expected = [
        DOCKERFILE, CLUSTER / "Dockerfile.dockerignore", RUNTIME_ENV, AWS, KUBERAY / "raycluster.yaml",
        KUBERAY / "rayjob.yaml", KUBERAY / "raycronjob.yaml", KUBERAY / "nightly-cronjob.yaml",
        KUBERAY / "serviceaccount.yaml", KUBERAY / "kustomization.yaml", OPERATIONS,
    ]  # fmt: skip
    missing = [rel(p) for p in expected if not p.is_file()]
    assert not missing, f"missing: {missing}"
    kinds = {doc["kind"] for _, doc in k8s_objects()}
    for kind in ("RayCluster", "RayJob", "RayCronJob", "CronJob", "ServiceAccount", "Role", "RoleBinding"):
        assert kind in kinds, f"no {kind} under cluster/"


KUBERAY_OBJECTS = [(label, doc) for label, doc in k8s_objects() if doc["apiVersion"].startswith("ray.io/")]


@needs_crds
@pytest.mark.parametrize("label,doc", KUBERAY_OBJECTS, ids=[label for label, _ in KUBERAY_OBJECTS])
def test_kuberay_resource_validates_against_its_crd(label, doc):
    assert doc["kind"] in CRD_FILES, f"{label}: no CRD known for kind {doc['kind']}"
    errors = crd_errors(doc)
    assert not errors, f"{label} does not validate against the {doc['kind']} CRD:\n  " + "\n  ".join(errors[:20])


@needs_crds
def test_crd_validation_can_fail():
    """Negative controls: a misspelt field, a missing required field and a wrong type are caught."""
    (_, rayjob), *_ = objects_of("RayJob")
    typo = copy.deepcopy(rayjob)
    typo["spec"]["backofLimit"] = typo["spec"].pop("backoffLimit")
    assert any("backofLimit" in e for e in crd_errors(typo))

    missing = copy.deepcopy(rayjob)
    del missing["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in crd_errors(missing))

    wrong_type = copy.deepcopy(rayjob)
    wrong_type["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert crd_errors(wrong_type)

    bad_quantity = copy.deepcopy(rayjob)
    container = bad_quantity["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["cpu"] = ["4"]  # int-or-string, not a list
    assert crd_errors(bad_quantity)



RBAC_OBJECTS = [(label, doc) for label, doc in k8s_objects() if doc["kind"] in RBAC_SCHEMAS]


@pytest.mark.parametrize("label,doc", CRONJOBS, ids=[label for label, _ in CRONJOBS])
def test_cronjob_has_the_required_batch_v1_fields(label, doc):
    errors = schema_errors(CRONJOB_SCHEMA, doc)
    assert not errors, f"{label}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("label,doc", RBAC_OBJECTS, ids=[label for label, _ in RBAC_OBJECTS])
def test_rbac_object_has_its_basic_fields(label, doc):
    errors = schema_errors(RBAC_SCHEMAS[doc["kind"]], doc)
    assert not errors, f"{label}:\n  " + "\n  ".join(errors)


def test_hand_made_schemas_can_fail():
    (_, cron), *_ = CRONJOBS
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert schema_errors(CRONJOB_SCHEMA, bad)
    bad = copy.deepcopy(cron)
    del bad["spec"]["schedule"]
    assert schema_errors(CRONJOB_SCHEMA, bad)
    bad = copy.deepcopy(cron)
    del bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert schema_errors(CRONJOB_SCHEMA, bad)


def test_nightly_cronjob_creates_the_rayjob_with_a_generated_name():
    pairs = cronjob_rayjob_files()
    assert pairs
    for label, path in pairs:
        (rayjob,) = load_docs(path)
        assert rayjob["kind"] == "RayJob", f"{label}: {rel(path)} is not a RayJob"
        meta = rayjob["metadata"]
        assert "generateName" in meta and "name" not in meta, (
            f"{rel(path)}: a nightly `kubectl create` needs metadata.generateName (a fixed name fails the second night)"
        )


def test_nightly_cronjob_rbac_lets_it_create_rayjobs():
    service_accounts = {doc["metadata"]["name"] for _, doc in objects_of("ServiceAccount")}
    roles = {doc["metadata"]["name"]: doc for _, doc in objects_of("Role")}
    bindings = [doc for _, doc in objects_of("RoleBinding")]
    for label, cron in CRONJOBS:
        spec = cron["spec"]
        assert spec.get("concurrencyPolicy") == "Forbid", f"{label}: concurrencyPolicy should be Forbid"
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName")
        assert account in service_accounts, f"{label}: ServiceAccount {account!r} is not defined under cluster/"
        allowed = False
        for binding in bindings:
            if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
                continue
            role = roles.get(binding["roleRef"]["name"])
            assert role is not None, f"RoleBinding {binding['metadata']['name']} refers to an undefined Role"
            for rule in role["rules"]:
                if "ray.io" in rule["apiGroups"] and "rayjobs" in rule["resources"] and "create" in rule["verbs"]:
                    allowed = True
        assert allowed, f"{label}: ServiceAccount {account} may not create ray.io rayjobs"


def test_kustomization_installs_the_schedule_not_the_one_off_objects():
    k = kustomization()
    resources = k.get("resources", [])
    for entry in resources:
        assert (KUBERAY / entry).is_file(), f"kustomization.yaml lists a missing file: {entry}"
    assert "nightly-cronjob.yaml" in resources and "serviceaccount.yaml" in resources
    # rayjob.yaml uses generateName (`kubectl apply` refuses it); the RayCronJob is the gated alternative.
    assert "rayjob.yaml" not in resources and "raycronjob.yaml" not in resources


CLUSTER_SPECS = cluster_specs()


@pytest.mark.parametrize("label,spec", CLUSTER_SPECS, ids=[label for label, _ in CLUSTER_SPECS])
def test_cluster_has_cpu_head_cpu_workers_and_a_preprovisioned_gpu_pool(label, spec):
    assert spec["rayVersion"] == pinned("ray"), f"{label}: rayVersion {spec['rayVersion']} != pyproject's ray {pinned('ray')}"
    assert spec.get("enableInTreeAutoscaling") is True, f"{label}: the Ray autoscaler should run (CPU group)"
    head = spec["headGroupSpec"]
    assert pod_gpus(head["template"]) == 0, f"{label}: the head should be a CPU Pod"
    assert head.get("rayStartParams", {}).get("num-cpus") == "0", f"{label}: no tasks on the head (num-cpus '0')"
    gpu = gpu_groups(spec)
    assert len(gpu) == 1, f"{label}: expected one GPU worker group, found {[g['groupName'] for g in gpu]}"
    (g,) = gpu
    assert g["minReplicas"] == g["maxReplicas"] == g.get("replicas", g["minReplicas"]), (
        f"{label}: the default GPU pool must be pre-provisioned (replicas = minReplicas = maxReplicas; "
        f"ray-project/ray#59144), got {g.get('replicas')}/{g['minReplicas']}/{g['maxReplicas']}"
    )
    assert g["minReplicas"] >= 1
    cpu = [w for w in spec["workerGroupSpecs"] if pod_gpus(w["template"]) == 0]
    assert cpu, f"{label}: no CPU worker group for reading and decoding"
    assert any(w["maxReplicas"] > w["minReplicas"] for w in cpu), f"{label}: the CPU group should autoscale"


@pytest.mark.parametrize("label,spec", CLUSTER_SPECS, ids=[label for label, _ in CLUSTER_SPECS])
def test_ray_pods_use_one_image_and_get_credentials_from_the_cluster(label, spec):
    images = set()
    for group, pod, container in ray_containers(spec):
        images.add(container["image"])
        assert pod.get("serviceAccountName") == RAY_SERVICE_ACCOUNT, f"{label} {group}: serviceAccountName"
        refs = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert any(r["name"] == S3_SECRET and r.get("optional") is True for r in refs), (
            f"{label} {group}: expected envFrom secretRef {S3_SECRET} (optional, so workload identity works without it)"
        )
    assert len(images) == 1, f"{label}: the Ray containers use different images: {images}"


def _job_concurrency_check(label: str, job_spec: dict):
    cluster = job_spec["rayClusterSpec"]
    (g,) = gpu_groups(cluster)
    gpus = g["maxReplicas"] * pod_gpus(g["template"])
    args, message = parse_job_args(_annotate_argv(job_spec["entrypoint"]))
    assert args is not None, message
    assert args.num_gpus_per_actor, f"{label}: state --num-gpus-per-actor explicitly"
    actors = gpus / args.num_gpus_per_actor
    assert actors == int(actors)
    assert args.concurrency == (int(actors), int(actors)), (
        f"{label}: --concurrency {args.concurrency} should be {int(actors)},{int(actors)} "
        f"({g['maxReplicas']} GPU Pods x {pod_gpus(g['template'])} GPU / {args.num_gpus_per_actor} per actor)"
    )


def test_job_concurrency_matches_the_gpu_pool():
    jobs = [(label, doc["spec"]) for label, doc in objects_of("RayJob")]
    jobs += [(label, doc["spec"]["jobTemplate"]) for label, doc in objects_of("RayCronJob")]
    assert jobs
    for label, job_spec in jobs:
        _job_concurrency_check(label, job_spec)


def test_concurrency_check_can_fail():
    (label, doc), *_ = objects_of("RayJob")
    spec = copy.deepcopy(doc["spec"])
    gpu_groups(spec["rayClusterSpec"])[0]["maxReplicas"] += 1
    with pytest.raises(AssertionError):
        _job_concurrency_check(label, spec)


def test_aws_launcher_gpu_pool_is_preprovisioned_and_matches_the_example():
    config = load_one(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), "the head: CPU 0, no GPU"
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU")}
    assert gpu_types, "aws.yaml: declare the GPU worker type's GPU resource explicitly"
    gpus = 0
    for name, t in gpu_types.items():
        assert t["min_workers"] == t["max_workers"], f"aws.yaml {name}: pre-provision the GPU pool (min_workers = max_workers)"
        instance = t["node_config"]["InstanceType"]
        if instance in EC2_GPUS:
            assert t["resources"]["GPU"] == EC2_GPUS[instance], f"aws.yaml {name}: {instance} has {EC2_GPUS[instance]} GPU(s)"
        gpus += t["max_workers"] * t["resources"]["GPU"]
    cpu_types = [t for name, t in types.items() if name not in gpu_types and name != config["head_node_type"]]
    assert cpu_types and any(t["max_workers"] > t["min_workers"] for t in cpu_types), "aws.yaml: an autoscaling CPU type"
    args, message = parse_job_args(_annotate_argv(config["metadata"]["example_submit"]))
    assert args is not None, message
    actors = int(gpus / args.num_gpus_per_actor)
    assert args.concurrency == (actors, actors), f"aws.yaml example: --concurrency should be {actors},{actors}"


def test_aws_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_one(AWS)
    validate_config(copy.deepcopy(config))
    validate_config(prepare_config(copy.deepcopy(config)))
    for name, t in config["available_node_types"].items():
        node = t["node_config"]
        assert "IamInstanceProfile" in node, f"aws.yaml {name}: S3 access through an IAM instance profile"


def test_every_node_runs_one_image_pinned_by_digest():
    """Every Ray Pod and EC2 node names the image of cluster/Dockerfile by digest: with a mutable tag
    and IfNotPresent, a node that cached an earlier build of the same tag runs old code silently."""
    images = {container["image"] for _, spec in CLUSTER_SPECS for _, _, container in ray_containers(spec)}
    aws_image = load_one(AWS)["docker"]["image"]
    for image in images | {aws_image}:
        assert re.fullmatch(r"[\w.\-/]+/img2pose-ray(:[\w.\-]+)?@sha256:[0-9a-f]{64}", image), (
            f"{image}: pin the image by digest (.../img2pose-ray@sha256:...; docs/operations.md, 'The image')"
        )
    assert len({image.partition("@")[2] for image in images}) == 1, f"the Ray Pods name different images: {images}"


# --------------------------------------------------------------------------- one definition


def test_cluster_spec_is_one_definition():
    """raycluster.yaml's spec, the RayJob's rayClusterSpec and the RayCronJob's are identical."""
    (_, cluster), = objects_of("RayCluster")
    for label, doc in objects_of("RayJob"):
        assert doc["spec"]["rayClusterSpec"] == cluster["spec"], f"{label}: rayClusterSpec differs from raycluster.yaml"
    for label, doc in objects_of("RayCronJob"):
        assert doc["spec"]["jobTemplate"]["rayClusterSpec"] == cluster["spec"], f"{label}: differs from raycluster.yaml"


def test_raycronjob_runs_the_rayjob():
    (_, rayjob), = objects_of("RayJob")
    for label, doc in objects_of("RayCronJob"):
        assert doc["spec"]["jobTemplate"] == rayjob["spec"], f"{label}: jobTemplate differs from rayjob.yaml's spec"
    cron_schedules = {doc["spec"]["schedule"] for _, doc in objects_of("RayCronJob") + CRONJOBS}
    assert len(cron_schedules) == 1, f"the RayCronJob and the CronJob disagree on the schedule: {cron_schedules}"


def test_rayjob_runtime_env_is_cluster_runtime_env_yaml():
    """RayJob.spec.runtimeEnvYAML = cluster/runtime_env.yaml, apart from working_dir (the image's code)."""
    base = load_one(RUNTIME_ENV)
    assert base.get("working_dir") == ".", "cluster/runtime_env.yaml uploads the checkout (working_dir: .)"
    expected = dict(base, working_dir=image_workdir())
    specs = [(label, doc["spec"]) for label, doc in objects_of("RayJob")]
    specs += [(label, doc["spec"]["jobTemplate"]) for label, doc in objects_of("RayCronJob")]
    assert specs
    for label, spec in specs:
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert runtime_env == expected, (
            f"{label}: runtimeEnvYAML differs from cluster/runtime_env.yaml (working_dir -> {image_workdir()}):\n"
            f"  got      {json.dumps(runtime_env, sort_keys=True)}\n  expected {json.dumps(expected, sort_keys=True)}"
        )
        # A local working_dir is uploaded by `ray job submit` in the submitter Pod (same image as the head).
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
        assert "submitterPodTemplate" not in spec, "the default submitter runs the head's image, which holds /app"


def test_rayjob_lifecycle():
    specs = [(label, doc["spec"]) for label, doc in objects_of("RayJob")]
    specs += [(label, doc["spec"]["jobTemplate"]) for label, doc in objects_of("RayCronJob")]
    for label, spec in specs:
        assert spec.get("shutdownAfterJobFinishes") is True, f"{label}: delete the cluster when the job ends"
        assert spec.get("ttlSecondsAfterFinished", 0) > 0, f"{label}: leave a short window to look at a failed cluster"
        assert spec.get("backoffLimit", 0) >= 1, f"{label}: retry on a fresh cluster (backoffLimit)"
        assert "clusterSelector" not in spec, f"{label}: batch runs bring their own cluster (rayClusterSpec)"
        deadline = spec.get("activeDeadlineSeconds")
        assert deadline, f"{label}: set activeDeadlineSeconds"
        # KubeRay restarts the deadline on each attempt: all attempts must end before the next night.
        assert deadline * (spec["backoffLimit"] + 1) < 24 * 3600, f"{label}: attempts could overlap the next nightly run"



@pytest.mark.parametrize("label,spec", rayjob_specs(), ids=[label for label, _ in rayjob_specs()])
def test_rayjobs_release_a_stuck_cluster_and_survive_a_dropped_follower(label, spec):
    """A GPU shortage fails the attempt early (KubeRay submits only once every Pod runs, so the job's
    own resource wait never applies), and a submitter that loses its log stream is retried rather than
    failing a run that is still working."""
    pre = spec.get("preRunningDeadlineSeconds")
    assert pre and pre < spec["activeDeadlineSeconds"], label
    if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
        assert (spec.get("submitterConfig") or {}).get("backoffLimit", 2) >= 5, label

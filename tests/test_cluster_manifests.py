"""The manifests under cluster/: parsed, validated, and one definition of one cluster.

- every YAML file parses (multi-document files too, duplicate keys refused);
- every KubeRay resource validates against the OpenAPI v3 schema of the real CRD of its apiVersion
  (only these tests skip without ../shared/kuberay-crds), unknown fields refused as
  `kubectl --validate=strict` would; every built-in object (ServiceAccounts, RBAC, ConfigMap, CronJob)
  against Kubernetes' own strict schemas (kubernetes-validate); cluster/aws.yaml against Ray's own
  cluster-launcher schema;
- the head and the workers have their own ServiceAccounts, and everything the Ray Pods name
  (ServiceAccounts, the Fluent Bit ConfigMap) is in the one file applied before them;
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
    AWS, CLUSTER, DOCKERFILE, KUBERAY, OPERATIONS, PREREQUISITES, RAY_SERVICE_ACCOUNT,
    RAY_WORKER_SERVICE_ACCOUNT, RUNTIME_ENV, S3_SECRET, YAML_FILES, cluster_specs, gpu_groups,
    image_workdir, k8s_objects, load_docs, load_one, objects_of, pinned, pod_gpus, ray_containers,
    ray_pod_specs, rayjob_specs, rel,
)  # fmt: skip
from job_commands import CRONJOBS, _annotate_argv, cronjob_rayjob_files, kustomization, parse_job_args
from k8s_schemas import CRD_FILES, K8S_VERSIONS, crd_errors, is_builtin, k8s_errors, needs_crds

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



BUILTIN_OBJECTS = [(label, doc) for label, doc in k8s_objects() if is_builtin(doc)]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("label,doc", BUILTIN_OBJECTS, ids=[label for label, _ in BUILTIN_OBJECTS])
def test_builtin_object_validates_against_kubernetes_schema(label, doc, version):
    errors = k8s_errors(doc, version)
    assert not errors, f"{label} does not validate against Kubernetes' {doc['kind']} schema:\n  " + "\n  ".join(errors)


def test_every_kuberay_object_is_validated():
    """Nothing under cluster/kuberay/ escapes a schema: each object is a KubeRay resource (its CRD), a
    built-in kind (Kubernetes' schema) or the Kustomization itself (rendered by test_cluster_render.py)."""
    for label, doc in k8s_objects():
        if label.startswith("cluster/kuberay/"):
            known = doc["apiVersion"].startswith("ray.io/") or is_builtin(doc) or doc["kind"] == "Kustomization"
            assert known, f"{label}: no schema for {doc['apiVersion']} {doc['kind']}"
    kinds = {doc["kind"] for _, doc in BUILTIN_OBJECTS}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"} <= kinds, kinds


def test_kubernetes_schemas_can_fail():
    """Negative controls: an unknown field, a missing required field and a wrong type are caught."""
    (_, cron), *_ = CRONJOBS
    typo = copy.deepcopy(cron)
    pod = typo["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    assert any("allowPrivilegeEscalaton" in e for e in k8s_errors(typo))
    missing = copy.deepcopy(cron)
    del missing["spec"]["schedule"]
    assert any("schedule" in e for e in k8s_errors(missing))
    wrong_type = copy.deepcopy(cron)
    wrong_type["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    assert k8s_errors(wrong_type)
    (_, binding), *_ = objects_of("RoleBinding")
    no_role = copy.deepcopy(binding)
    del no_role["roleRef"]
    assert any("roleRef" in e for e in k8s_errors(no_role))
    (_, account), *_ = objects_of("ServiceAccount")
    assert k8s_errors(dict(account, automountToken=False))


def job_pod_problems(cron: dict) -> list[str]:
    """What the API server refuses in a CronJob's Pod beyond its OpenAPI schema: a Job's Pods restart
    Never or OnFailure (the schema allows Always; the Job validation does not)."""
    policy = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"].get("restartPolicy")
    return [] if policy in ("Never", "OnFailure") else [f"restartPolicy {policy!r}: a Job's Pod needs Never or OnFailure"]


@pytest.mark.parametrize("label,doc", CRONJOBS, ids=[label for label, _ in CRONJOBS])
def test_cronjob_pods_restart_as_a_job_allows(label, doc):
    assert not job_pod_problems(doc), (label, job_pod_problems(doc))
    bad = copy.deepcopy(doc)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert job_pod_problems(bad) and not k8s_errors(bad), "negative control: only this check catches Always"


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
        # KubeRay binds the autoscaler's Role (patch Pods and the RayCluster) to the head's account only.
        account = RAY_SERVICE_ACCOUNT if group == "head" else RAY_WORKER_SERVICE_ACCOUNT
        assert pod.get("serviceAccountName") == account, f"{label} {group}: serviceAccountName should be {account}"
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


def test_aws_launcher_workers_scale_to_zero_and_a_run_asks_for_its_whole_gpu_pool():
    """An idle EC2 cluster is its head alone; the example run fixes its pool at every GPU the GPU type
    may have and waits for them (the job asks the autoscaler while it waits: tests/test_resources.py)."""
    config = load_one(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), "the head: CPU 0, no GPU"
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU")}
    assert gpu_types, "aws.yaml: declare the GPU worker type's GPU resource explicitly"
    gpus = 0
    for name, t in gpu_types.items():
        instance = t["node_config"]["InstanceType"]
        if instance in EC2_GPUS:
            assert t["resources"]["GPU"] == EC2_GPUS[instance], f"aws.yaml {name}: {instance} has {EC2_GPUS[instance]} GPU(s)"
        assert "--gpus all" in (t.get("docker") or {}).get("worker_run_options", []), f"aws.yaml {name}: give the GPUs explicitly"
        gpus += t["max_workers"] * t["resources"]["GPU"]
    workers = [(name, t) for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 < t["max_workers"] for _, t in workers), "aws.yaml: workers scale from zero"
    assert config["docker"].get("disable_automatic_runtime_detection") is True
    args, message = parse_job_args(_annotate_argv(config["metadata"]["example_submit"]))
    assert args is not None, message
    actors = int(gpus / args.num_gpus_per_actor)
    assert args.concurrency == (actors, actors), f"aws.yaml example: --concurrency should be {actors},{actors}"
    assert args.wait_for_resources >= 600, "aws.yaml example: wait for the GPU nodes to come up (--wait-for-resources)"


def test_aws_launcher_names_its_network_so_ray_opens_no_ssh_to_the_world():
    """With SecurityGroupIds on every node type, Ray's AWS bootstrap keeps them and creates no group (its
    own group opens port 22 to 0.0.0.0/0); checked by running that bootstrap step, which returns before
    any AWS call when every type names its groups."""
    from ray.autoscaler._private.aws.config import _configure_security_group

    config = load_one(AWS)
    for name, t in config["available_node_types"].items():
        node = t["node_config"]
        assert node.get("SecurityGroupIds") and node.get("SubnetIds"), f"aws.yaml {name}: name its security group and subnets"
    configured = _configure_security_group(copy.deepcopy(config))
    for name, t in configured["available_node_types"].items():
        assert t["node_config"]["SecurityGroupIds"] == config["available_node_types"][name]["node_config"]["SecurityGroupIds"]


def test_every_node_runs_one_image_pinned_by_digest():
    """Every Ray Pod and EC2 node names the image of cluster/Dockerfile by digest: with a mutable tag
    and IfNotPresent, a node that cached an earlier build of the same tag runs old code silently."""
    images = {container["image"] for _, spec in CLUSTER_SPECS for _, _, container in ray_containers(spec)}
    images |= {c["image"] for _, spec in rayjob_specs() for c in submitter_containers(spec)}
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
        # A local working_dir is uploaded by `ray job submit` in the submitter Pod, which must run the
        # head's image (it holds /app): KubeRay's default submitter does, a submitterPodTemplate must say so.
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
        head_image = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        template = spec.get("submitterPodTemplate")
        if template is not None:
            submitter = template["spec"]["containers"][0]
            assert submitter["image"] == head_image, f"{label}: the submitter must run the head's image, which holds /app"
            # KubeRay writes `ray job submit ... -- <entrypoint>` only into a container without a command.
            assert not submitter.get("command") and not submitter.get("args"), (
                f"{label}: leave the submitter's command to KubeRay"
            )
            assert template["spec"].get("restartPolicy") in ("Never", "OnFailure"), f"{label}: a Job's Pod restartPolicy"


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


def submitter_containers(spec: dict) -> list[dict]:
    """The first container of a RayJob spec's submitterPodTemplate (KubeRay's submitter), if any."""
    template = spec.get("submitterPodTemplate")
    return template["spec"]["containers"][:1] if template else []


# --------------------------------------------------------------------------- identities and prerequisites


def _pod_references(pod: dict) -> tuple[set[str], set[str]]:
    accounts = {pod["serviceAccountName"]} if pod.get("serviceAccountName") else set()
    config_maps = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    return accounts, config_maps


def ray_pod_references() -> tuple[set[str], set[str]]:
    """ServiceAccounts and ConfigMaps named by every Ray Pod and RayJob submitter Pod."""
    accounts, config_maps = set(), set()
    for _, spec in CLUSTER_SPECS:
        for _, pod in ray_pod_specs(spec):
            a, c = _pod_references(pod)
            accounts |= a
            config_maps |= c
    for _, spec in rayjob_specs():
        if spec.get("submitterPodTemplate"):
            a, c = _pod_references(spec["submitterPodTemplate"]["spec"])
            accounts |= a
            config_maps |= c
    return accounts, config_maps


def prerequisite_problems(accounts: set[str], config_maps: set[str]) -> list[str]:
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in load_docs(PREREQUISITES)}
    wanted = [("ServiceAccount", a) for a in sorted(accounts)] + [("ConfigMap", c) for c in sorted(config_maps)]
    problems = [f"{kind} {name} is not in {rel(PREREQUISITES)}" for kind, name in wanted if (kind, name) not in defined]
    return problems


def test_everything_the_ray_pods_name_is_applied_before_them():
    """The docs apply serviceaccount.yaml (directly or through `apply -k`) before any Ray resource
    (test_cluster_docs.py): it must hold every ServiceAccount and ConfigMap the Ray Pods name, or a
    fresh namespace gets a head refused by KubeRay or Pods stuck in ContainerCreating."""
    accounts, config_maps = ray_pod_references()
    assert {RAY_SERVICE_ACCOUNT, RAY_WORKER_SERVICE_ACCOUNT} <= accounts and config_maps
    problems = prerequisite_problems(accounts, config_maps)
    assert not problems, problems
    assert rel(PREREQUISITES).rpartition("/")[2] in kustomization()["resources"]
    # Negative control: a name that the file lacks is reported.
    assert prerequisite_problems(accounts | {"img2pose-missing"}, config_maps)
    assert prerequisite_problems(accounts, config_maps | {"img2pose-missing"})


def test_workers_have_s3_access_but_no_kubernetes_rights():
    """Both accounts carry the same IRSA role (the workers read and write S3 like the head), and no
    Role or RoleBinding under cluster/ reaches the workers' account: KubeRay binds the autoscaler's
    Role only to the head's ServiceAccount (common/rbac.go BuildRoleBinding: subject
    GetHeadGroupServiceAccountName), so the workers keep no right to patch Pods or the RayCluster."""
    accounts = {doc["metadata"]["name"]: doc for _, doc in objects_of("ServiceAccount")}
    head, worker = accounts[RAY_SERVICE_ACCOUNT], accounts[RAY_WORKER_SERVICE_ACCOUNT]
    role = "eks.amazonaws.com/role-arn"
    assert head["metadata"]["annotations"][role] == worker["metadata"]["annotations"][role]
    assert worker.get("automountServiceAccountToken") is False, "the workers never call the Kubernetes API"
    for label, binding in objects_of("RoleBinding") + objects_of("ClusterRoleBinding"):
        names = {s["name"] for s in binding.get("subjects", []) if s["kind"] == "ServiceAccount"}
        assert RAY_WORKER_SERVICE_ACCOUNT not in names, f"{label} grants the workers' account Kubernetes rights"

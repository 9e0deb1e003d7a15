"""Cluster manifests and configs (cluster/): parsed, validated and kept in step with the job.

- every YAML file under cluster/ parses (multi-document files too, duplicate keys refused);
- every KubeRay resource validates against the OpenAPI v3 schema of the real CRD of its apiVersion
  (../shared/kuberay-crds, or $IMG2POSE_SHARED/kuberay-crds; only these tests skip without it),
  unknown fields refused as `kubectl --validate=strict` would; the Kubernetes CronJob and its RBAC
  against small hand-made schemas of their required fields; cluster/aws.yaml against Ray's own
  cluster-launcher schema;
- the job arguments of every manifest, of aws.yaml's example and of the README and
  docs/operations.md commands are accepted by ``jobs.annotate.parse_args`` (and a wrong flag is not);
- the GPU pool is pre-provisioned and the job's --concurrency matches it; the cluster spec, the
  RayJob, the RayCronJob and the nightly CronJob's RayJob are one definition; the RayJob's
  runtimeEnvYAML is cluster/runtime_env.yaml; the Dockerfile's base image matches pyproject's pins;
  no credentials anywhere.

No network, no Docker, no Kubernetes: a few seconds.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
AWS = CLUSTER / "aws.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"

SHARED = Path(os.environ.get("IMG2POSE_SHARED") or Path(__file__).resolve().parents[2] / "shared")
CRDS = SHARED / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
needs_crds = pytest.mark.skipif(
    not all((CRDS / name).is_file() for name in CRD_FILES.values()),
    reason=f"the KubeRay CRDs ({CRDS}) are absent: set IMG2POSE_SHARED to the folder holding kuberay-crds/",
)

# The Ray Pods' credentials: an optional Secret (envFrom) and a ServiceAccount for workload identity.
S3_SECRET = "img2pose-s3"
RAY_SERVICE_ACCOUNT = "img2pose-ray"
GPU = "nvidia.com/gpu"
# GPUs per instance of the EC2 types aws.yaml may name (cross-check of its explicit GPU resource).
EC2_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "g6.xlarge": 1, "g6.2xlarge": 1, "g6.12xlarge": 4}

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):
    """Refuses duplicate mapping keys (PyYAML keeps the last silently; kubectl refuses them)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def load_docs(path: Path) -> tuple:
    with open(path, encoding="utf-8") as fh:
        return tuple(doc for doc in yaml.load_all(fh, Loader=_StrictLoader) if doc is not None)


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{rel(path)}: expected one YAML document, found {len(docs)}"
    return docs[0]


YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


@functools.cache
def k8s_objects() -> tuple:
    """(label, document) for every Kubernetes object (a mapping with apiVersion and kind) under cluster/."""
    out = []
    for path in YAML_FILES:
        try:
            docs = load_docs(path)
        except yaml.YAMLError:
            continue  # reported by test_every_yaml_file_parses
        for i, doc in enumerate(docs):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                out.append((f"{rel(path)}#{i} {doc['kind']}", doc))
    return tuple(out)


def objects_of(kind: str) -> list[tuple[str, dict]]:
    return [(label, doc) for label, doc in k8s_objects() if doc["kind"] == kind]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==")


# --------------------------------------------------------------------------- parsing


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


# --------------------------------------------------------------------------- CRD validation


_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_ONE = ("items", "additionalProperties", "not")
_SCHEMA_LIST = ("anyOf", "allOf", "oneOf")


def k8s_schema_to_jsonschema(node):
    """A structural OpenAPI v3 schema of a CRD as a JSON Schema, with the Kubernetes extensions mapped:

    - ``x-kubernetes-int-or-string`` -> anyOf integer / string;
    - ``nullable`` -> the type also allows null;
    - objects with ``properties`` refuse unknown fields (``additionalProperties: false``) unless
      ``x-kubernetes-preserve-unknown-fields`` keeps them: the API server prunes unknown fields
      silently and ``kubectl --validate=strict`` refuses them; a typo must fail here;
    - ``x-kubernetes-validations`` (CEL rules) are dropped: not evaluated here.
    """
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "x-kubernetes-validations":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: k8s_schema_to_jsonschema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE and isinstance(value, dict):
            out[key] = k8s_schema_to_jsonschema(value)
        elif key in _SCHEMA_LIST:
            out[key] = [k8s_schema_to_jsonschema(sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# The root `metadata` of a CRD schema is a bare object: check the ObjectMeta fields we use.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "generateName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?-$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}


@functools.cache
def crd_validator(kind: str, version: str) -> Draft202012Validator:
    with open(CRDS / CRD_FILES[kind], encoding="utf-8") as fh:
        crd = yaml.load(fh, Loader=_BaseLoader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    entries = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entries, f"the {kind} CRD has no version {version!r} (it has {[v['name'] for v in crd['spec']['versions']]})"
    assert entries[0].get("served", True), f"{kind} {version} is not served"
    # (Draft202012Validator.check_schema would take seconds on these schemas; test_crd_validation_can_fail
    # shows the converted schema does refuse bad documents.)
    return Draft202012Validator(k8s_schema_to_jsonschema(entries[0]["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in crd_validator(doc["kind"], version).iter_errors(doc)
    ]
    errors += [
        f"metadata.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(OBJECT_META).iter_errors(doc.get("metadata", {}))
    ]
    return errors


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


# --------------------------------------------------------------------------- plain Kubernetes objects

_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
    },
}
CRONJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "batch/v1"},
        "kind": {"const": "CronJob"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}},
        "spec": {
            "type": "object",
            "required": ["schedule", "jobTemplate"],
            "properties": {
                "schedule": {"type": "string", "pattern": r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"},
                "timeZone": {"type": "string"},
                "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
                "jobTemplate": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {
                                "template": {
                                    "type": "object",
                                    "required": ["spec"],
                                    "properties": {
                                        "spec": {
                                            "type": "object",
                                            "required": ["containers", "restartPolicy"],
                                            "properties": {
                                                "restartPolicy": {"enum": ["OnFailure", "Never"]},
                                                "serviceAccountName": {"type": "string"},
                                                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                                            },
                                        }
                                    },
                                }
                            },
                        }
                    },
                },
            },
        },
    },
}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
RBAC_SCHEMAS = {
    "ServiceAccount": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": "v1"}, "metadata": _NAMED},
    },
    "Role": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "rules"],
        "properties": {
            "apiVersion": {"const": "rbac.authorization.k8s.io/v1"},
            "metadata": _NAMED,
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["apiGroups", "resources", "verbs"],
                    "properties": {
                        "apiGroups": {"type": "array", "items": {"type": "string"}},
                        "resources": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "verbs": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "RoleBinding": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "roleRef", "subjects"],
        "properties": {
            "apiVersion": {"const": "rbac.authorization.k8s.io/v1"},
            "metadata": _NAMED,
            "roleRef": {
                "type": "object",
                "required": ["apiGroup", "kind", "name"],
                "properties": {"apiGroup": {"const": "rbac.authorization.k8s.io"}, "kind": {"enum": ["Role", "ClusterRole"]}},
            },
            "subjects": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "required": ["kind", "name"]},
            },
        },
    },
}


def schema_errors(schema: dict, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in Draft202012Validator(schema).iter_errors(doc)]


CRONJOBS = objects_of("CronJob")
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


# --------------------------------------------------------------------------- the nightly CronJob


def kustomization() -> dict:
    return load_one(KUBERAY / "kustomization.yaml")


def configmap_files(name: str) -> dict[str, Path]:
    """key -> file of the ConfigMap that kustomization.yaml generates under ``name``."""
    for gen in kustomization().get("configMapGenerator", []):
        if gen["name"] == name:
            out = {}
            for entry in gen.get("files", []):
                key, _, path = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
                out[key] = KUBERAY / path
            return out
    raise AssertionError(f"kustomization.yaml generates no ConfigMap named {name}")


def cronjob_rayjob_files() -> list[tuple[str, Path]]:
    """For each CronJob: the RayJob manifest file it creates (through its ConfigMap volume)."""
    out = []
    for label, cron in CRONJOBS:
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        argv = container.get("command", []) + container.get("args", [])
        assert "create" in argv and "-f" in argv, f"{label}: the container does not run `kubectl create -f`: {argv}"
        manifest_path = argv[argv.index("-f") + 1]
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
        folder, _, key = manifest_path.rpartition("/")
        assert folder in mounts, f"{label}: {manifest_path} is not under a mounted volume ({sorted(mounts)})"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[folder])
        files = configmap_files(volume["configMap"]["name"])
        assert key in files, f"{label}: ConfigMap {volume['configMap']['name']} has no key {key} ({sorted(files)})"
        assert files[key].is_file(), f"{label}: {rel(files[key])} does not exist"
        out.append((label, files[key]))
    return out


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


# --------------------------------------------------------------------------- job arguments


def _annotate_argv(command: str) -> list[str] | None:
    """The arguments after ``jobs/annotate.py`` in a shell command, up to a shell operator; None if absent."""
    tokens = shlex.split(command, comments=True)
    for i, token in enumerate(tokens):
        if token.endswith("jobs/annotate.py"):
            argv = []
            for t in tokens[i + 1 :]:
                if t in ("&&", "||", ";", "|", "&") or t.startswith((">", "<", "2>")):
                    break
                if t.endswith(";"):
                    argv.append(t[:-1])
                    break
                argv.append(t)
            return argv
    return None


def markdown_commands(path: Path) -> list[str]:
    """Every command line of the shell-like fenced code blocks that runs jobs/annotate.py."""
    from doc_commands import shell_lines

    if not path.is_file():
        return []
    return [line for line in shell_lines(path) if "jobs/annotate.py" in line]


def job_commands() -> list[tuple[str, str]]:
    """(source, command) of every place that states the job's command line."""
    out = []
    for label, doc in objects_of("RayJob"):
        out.append((f"{label} spec.entrypoint", (doc.get("spec") or {}).get("entrypoint", "")))
    for label, doc in objects_of("RayCronJob"):
        template = (doc.get("spec") or {}).get("jobTemplate") or {}
        out.append((f"{label} spec.jobTemplate.entrypoint", template.get("entrypoint", "")))
    try:
        pairs = cronjob_rayjob_files()
    except (AssertionError, KeyError, StopIteration, ValueError):
        pairs = []  # reported by test_nightly_cronjob_creates_the_rayjob_with_a_generated_name
    for label, path in pairs:
        for rayjob in load_docs(path):
            entrypoint = (rayjob.get("spec") or {}).get("entrypoint", "")
            out.append((f"{label} -> ConfigMap -> {rel(path)} spec.entrypoint", entrypoint))
    try:
        example = load_one(AWS).get("metadata", {}).get("example_submit")
    except yaml.YAMLError:
        example = None  # reported by test_every_yaml_file_parses
    if example:
        out.append((f"{rel(AWS)} metadata.example_submit", example))
    for path in (README, OPERATIONS):
        for i, command in enumerate(markdown_commands(path)):
            out.append((f"{rel(path)} command {i + 1}", command))
    return out


JOB_COMMANDS = job_commands()


def _job_parser():
    """jobs.annotate.parse_args; the repository root is put on sys.path when `jobs` is not importable
    (as jobs/annotate.py does for itself), e.g. under a bare `pytest` with an older editable install."""
    try:
        from jobs.annotate import parse_args
    except ModuleNotFoundError:
        sys.path.insert(0, str(ROOT))
        from jobs.annotate import parse_args
    return parse_args


def parse_job_args(argv: list[str]):
    """jobs.annotate.parse_args(argv), or None with the parser's message when it refuses them."""
    parse_args = _job_parser()

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse_args(argv), ""
        except SystemExit as exc:
            return None, f"exit {exc.code}: {err.getvalue().strip()}"


@pytest.mark.parametrize("source,command", JOB_COMMANDS, ids=[s for s, _ in JOB_COMMANDS])
def test_job_arguments_are_accepted_by_the_job(source, command):
    argv = _annotate_argv(command)
    assert argv is not None, f"{source}: no jobs/annotate.py in {command!r}"
    if "--help" in argv or "-h" in argv:
        pytest.skip("a --help command")
    args, message = parse_job_args(argv)
    assert args is not None, f"{source}: jobs/annotate.py refuses {argv}: {message}"


def test_job_commands_are_found_everywhere():
    sources = [s for s, _ in JOB_COMMANDS]
    for needle in ("RayJob spec.entrypoint", "RayCronJob spec.jobTemplate", "-> ConfigMap ->", "aws.yaml metadata", "docs/operations.md"):
        assert any(needle in s for s in sources), f"no job command found for {needle!r} (found: {sources})"


def test_a_wrong_flag_is_refused():
    """Negative control: the argument check does fail on a flag the job does not have, or a bad value."""
    (_, entrypoint), *_ = [(s, c) for s, c in JOB_COMMANDS if "RayJob spec.entrypoint" in s]
    argv = _annotate_argv(entrypoint)
    assert parse_job_args(argv)[0] is not None
    assert parse_job_args(argv + ["--no-such-flag"])[0] is None
    assert parse_job_args([a.replace("--batch-size", "--batchsize") for a in argv])[0] is None
    swapped = argv[:]
    swapped[swapped.index("--concurrency") + 1] = "4,2"  # MIN > MAX
    assert parse_job_args(swapped)[0] is None
    assert parse_job_args([a for a in argv if a != "--output" and not a.startswith("s3://annotations")])[0] is None


def test_cluster_jobs_read_and_write_object_storage_and_resume():
    """Manifests run the job on object storage with a bundle from object storage, resumable."""
    for source, command in JOB_COMMANDS:
        if "README" in source or "operations.md" in source:
            continue
        assert "python jobs/annotate.py" in command, f"{source}: run the script as `python jobs/annotate.py`"
        args, _ = parse_job_args(_annotate_argv(command))
        assert all("://" in uri for uri in args.input), f"{source}: --input should be an object-store URL"
        assert "://" in args.output, f"{source}: --output should be an object-store URL"
        assert args.bundle and "://" in args.bundle, f"{source}: --bundle should come from object storage"
        assert args.skip_existing, f"{source}: cluster runs resume with --skip-existing"


# --------------------------------------------------------------------------- cluster shape and GPU pool


def cluster_specs() -> list[tuple[str, dict]]:
    """Every Ray cluster spec: RayClusters', RayJobs' rayClusterSpec, RayCronJobs' jobTemplate.rayClusterSpec."""
    out = [(label, doc.get("spec") or {}) for label, doc in objects_of("RayCluster")]
    for label, doc in objects_of("RayJob"):
        out.append((f"{label} rayClusterSpec", (doc.get("spec") or {}).get("rayClusterSpec") or {}))
    for label, doc in objects_of("RayCronJob"):
        template = (doc.get("spec") or {}).get("jobTemplate") or {}
        out.append((f"{label} jobTemplate.rayClusterSpec", template.get("rayClusterSpec") or {}))
    return out


def container_gpus(container: dict) -> int:
    resources = container.get("resources", {})
    limits = resources.get("limits", {})
    requests = resources.get("requests", {})
    if GPU in requests:
        assert str(requests[GPU]) == str(limits.get(GPU)), f"{container['name']}: {GPU} requests and limits differ"
    return int(str(limits.get(GPU, 0)))


def pod_gpus(template: dict) -> int:
    return sum(container_gpus(c) for c in template["spec"]["containers"])


def gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec.get("workerGroupSpecs", []) if pod_gpus(g["template"]) > 0]


def ray_containers(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, pod spec, Ray container) of the head and every worker group (the Ray container is the first)."""
    out = [("head", spec["headGroupSpec"]["template"]["spec"], spec["headGroupSpec"]["template"]["spec"]["containers"][0])]
    for g in spec.get("workerGroupSpecs", []):
        out.append((g["groupName"], g["template"]["spec"], g["template"]["spec"]["containers"][0]))
    return out


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


def test_every_node_runs_the_image_of_this_version():
    """The Ray Pods and the EC2 nodes run the image built from cluster/Dockerfile, tagged with the package version."""
    version = pyproject()["project"]["version"]
    images = {container["image"] for _, spec in CLUSTER_SPECS for _, _, container in ray_containers(spec)}
    images.add(load_one(AWS)["docker"]["image"])
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name.endswith("/img2pose-ray") and tag == version, f"{image}: expected .../img2pose-ray:{version}"


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


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def image_workdir() -> str:
    workdirs = [arg for word, arg in dockerfile_instructions() if word == "WORKDIR"]
    assert workdirs, "cluster/Dockerfile sets no WORKDIR"
    return workdirs[-1]


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


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_matches_the_pins():
    froms = [arg for word, arg in dockerfile_instructions() if word == "FROM"]
    assert len(froms) == 1, f"one stage expected, FROM lines: {froms}"
    image = froms[0].split()[0]
    m = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-(?P<platform>gpu|cu\d+)", image)
    assert m, f"FROM {image}: expected rayproject/ray:<ray>-py3XX-gpu (or -cuXXX)"
    assert m["ray"] == pinned("ray"), f"FROM {image}: Ray {m['ray']} != pyproject's {pinned('ray')}"
    requires = pyproject()["project"]["requires-python"]
    lowest = re.search(r">=\s*(\d+)\.(\d+)", requires)
    assert (m["major"], m["minor"]) == ("3", "11") == lowest.groups(), f"FROM {image}: Python 3.11 (requires-python {requires})"


def test_dockerfile_installs_the_pinned_torch_and_the_project():
    runs = " ".join(arg for word, arg in dockerfile_instructions() if word == "RUN")
    for package in ("torch", "torchvision"):
        found = re.findall(rf"(?<![\w-]){package}==([\w.+]+)", runs)
        assert found and set(found) == {pinned(package)}, f"Dockerfile pins {package} {found}, pyproject {pinned(package)}"
    assert re.search(r"pip install[^&]*\s/app\b", runs), "the Dockerfile should pip install the project from /app"


def test_dockerfile_copies_no_credentials_bundles_or_whole_context():
    secret_name = re.compile(r"(?i)(secret|passw|token|credential|access_key|AWS_ACCESS_KEY_ID|AWS_SESSION)")
    last_user = None  # the base image's user (ray) unless a USER says otherwise
    for word, arg in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", arg) or [arg.split()[0]]
            for name in names:
                assert not secret_name.search(name), f"Dockerfile {word} {name}: credentials come from the cluster"
        if word in ("COPY", "ADD"):
            assert word == "COPY", "use COPY (ADD fetches URLs and unpacks archives)"
            parts = [p for p in arg.split() if not p.startswith("--")]
            *sources, _dest = parts
            for src in sources:
                assert src not in (".", "./", "*"), "copy named paths only, never the whole build context"
                assert not re.search(r"(?i)(\.pth|\.pt|\.safetensors|bundle|\.aws|\.ray|credential|\.env|\.pem)", src), (
                    f"COPY {src}: no weights, bundles or credentials in the image"
                )
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        if word == "USER":
            last_user = arg
    assert last_user not in ("root", "0"), "the image should end as the unprivileged ray user"
    assert image_workdir() == "/app"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for pattern in ("**/*.pth", "**/*.safetensors"):
        assert pattern in ignore, f"cluster/Dockerfile.dockerignore should exclude {pattern}"


# --------------------------------------------------------------------------- credentials

_SECRET_PATTERNS = [
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("aws_secret_access_key value", re.compile(r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{20,}")),
    ("AWS secret key", re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("bearer/token value", re.compile(r"(?i)(auth_token|session_token|password)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+_\-]{16,}")),
]
# Environment variables that must never carry a literal value in a manifest.
_SENSITIVE_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"}


def literal_credentials(text: str) -> list[str]:
    found = []
    for name, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group(0)
            if name == "AWS secret key" and not (re.search(r"[A-Z]", value) and re.search(r"[a-z]", value) and re.search(r"\d", value)):
                continue  # a path or a word, not a 40-character key
            found.append(f"{name}: {value[:12]}...")
    return found


def env_literals(doc) -> list[str]:
    """Sensitive env entries with a literal value anywhere in a Kubernetes object; and Secrets with data."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
                found.append(f"{path}: a Secret with data (create it with kubectl, never commit it)")
            for key, value in node.items():
                if key == "env" and isinstance(value, list):
                    for entry in value:
                        if isinstance(entry, dict) and entry.get("name") in _SENSITIVE_ENV and "value" in entry:
                            found.append(f"{path}.env: {entry['name']} has a literal value")
                if isinstance(key, str) and key.lower() in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
                    found.append(f"{path}.{key}: credentials in a config")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, "")
    return found


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


def _find_key(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            else:
                yield from _find_key(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _find_key(item, key)


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


# --------------------------------------------------------------------------- documentation


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


def _rayjob_specs() -> list[tuple[str, dict]]:
    specs = [(label, doc["spec"]) for label, doc in objects_of("RayJob")]
    specs += [(label, doc["spec"]["jobTemplate"]) for label, doc in objects_of("RayCronJob")]
    return specs


@pytest.mark.parametrize("label,spec", _rayjob_specs(), ids=[label for label, _ in _rayjob_specs()])
def test_rayjobs_release_a_stuck_cluster_and_survive_a_dropped_follower(label, spec):
    """A GPU shortage fails the attempt early (KubeRay submits only once every Pod runs, so the job's
    own resource wait never applies), and a submitter that loses its log stream is retried rather than
    failing a run that is still working."""
    pre = spec.get("preRunningDeadlineSeconds")
    assert pre and pre < spec["activeDeadlineSeconds"], label
    if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
        assert (spec.get("submitterConfig") or {}).get("backoffLimit", 2) >= 5, label

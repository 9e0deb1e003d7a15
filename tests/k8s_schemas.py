"""Schemas to validate Kubernetes objects against without a cluster: the real KubeRay CRDs
(../shared/kuberay-crds, or $IMG2POSE_SHARED/kuberay-crds) turned into JSON Schema, and Kubernetes'
own schemas of the built-in kinds (ServiceAccount, RBAC, ConfigMap, CronJob, Pod ...) as bundled by
the kubernetes-validate package."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

from cluster_files import _BaseLoader

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


# Kubernetes' own schemas for the built-in kinds (ServiceAccount, Role, RoleBinding, ConfigMap, CronJob,
# Pod ...): the official OpenAPI schemas as JSON Schema, bundled offline by kubernetes-validate (a pinned
# test dependency). The "strict" variant refuses unknown fields, like `kubectl --validate=strict`.
# Versions: the kubectl of this set-up (v1.32) and the newest the package knows.
K8S_VERSIONS = ("1.32", kubernetes_validate.latest_version().rpartition(".")[0])

# Groups that are not Kubernetes API objects or have schemas of their own: ray.io (the CRDs above) and
# kustomize's own kustomization.yaml.
_NOT_BUILTIN_GROUPS = ("ray.io", "kustomize.config.k8s.io")


def is_builtin(doc: dict) -> bool:
    """Whether the object's kind has an official Kubernetes schema in kubernetes-validate."""
    group = doc["apiVersion"].rpartition("/")[0]
    return group not in _NOT_BUILTIN_GROUPS and k8s_schema_known(doc["kind"], doc["apiVersion"])


@functools.cache
def k8s_schema_known(kind: str, api_version: str) -> bool:
    try:
        kubernetes_validate.validate({"apiVersion": api_version, "kind": kind}, K8S_VERSIONS[0], strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


def k8s_errors(doc: dict, version: str = K8S_VERSIONS[0]) -> list[str]:
    """The first error of the object against Kubernetes' strict schema of its kind and apiVersion
    (kubernetes-validate stops at the first), or [] when it validates."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message} (Kubernetes {e.version})"]
    return []


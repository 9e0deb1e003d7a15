"""Schemas to validate Kubernetes objects against without a cluster: the real KubeRay CRDs
(../shared/kuberay-crds, or $IMG2POSE_SHARED/kuberay-crds) turned into JSON Schema, and small
hand-made schemas of the fields of the plain Kubernetes objects (CronJob, RBAC) that the manifests use."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

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


"""The files under cluster/ as data, for the cluster tests: paths, a strict YAML loader, the
Kubernetes objects by kind, the Ray cluster specs inside RayClusters, RayJobs and RayCronJobs, the
Dockerfile's instructions, pyproject's pins and the Fluent Bit configuration of the Ray Pods' log sidecars."""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
AWS = CLUSTER / "aws.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"

# The Ray Pods' credentials: an optional Secret (envFrom) and ServiceAccounts for workload identity:
# the head's (KubeRay binds the autoscaler's Role to it) and the workers' (no Kubernetes rights).
S3_SECRET = "img2pose-s3"
RAY_SERVICE_ACCOUNT = "img2pose-ray"
RAY_WORKER_SERVICE_ACCOUNT = "img2pose-ray-worker"
# What every Ray Pod needs before a Ray resource makes it: one file, applied first (docs, kustomize).
PREREQUISITES = KUBERAY / "serviceaccount.yaml"
GPU = "nvidia.com/gpu"


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
        return loads_docs(fh.read())


def loads_docs(text: str) -> tuple:
    """The YAML documents of a string (e.g. kubectl's output), with the same strict loader."""
    return tuple(doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None)


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


def ray_pod_specs(spec: dict) -> list[tuple[str, dict]]:
    """(group, pod spec) of the head and of every worker group of a Ray cluster spec."""
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def ray_containers(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, pod spec, Ray container) of the head and every worker group (the Ray container is the first)."""
    out = [("head", spec["headGroupSpec"]["template"]["spec"], spec["headGroupSpec"]["template"]["spec"]["containers"][0])]
    for g in spec.get("workerGroupSpecs", []):
        out.append((g["groupName"], g["template"]["spec"], g["template"]["spec"]["containers"][0]))
    return out




def rayjob_specs() -> list[tuple[str, dict]]:
    """(label, RayJob spec) of every RayJob and of every RayCronJob's jobTemplate."""
    specs = [(label, doc["spec"]) for label, doc in objects_of("RayJob")]
    specs += [(label, doc["spec"]["jobTemplate"]) for label, doc in objects_of("RayCronJob")]
    return specs


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


# --------------------------------------------------------------------------- Ray log shipping


def fluent_bit_config() -> tuple[str, str]:
    """(ConfigMap name, fluent-bit.conf text) of the one Fluent Bit ConfigMap in serviceaccount.yaml."""
    maps = [doc for doc in load_docs(PREREQUISITES) if doc["kind"] == "ConfigMap" and "fluent-bit.conf" in doc.get("data", {})]
    assert len(maps) == 1, f"{rel(PREREQUISITES)}: expected one ConfigMap with a fluent-bit.conf key"
    return maps[0]["metadata"]["name"], maps[0]["data"]["fluent-bit.conf"]


def parse_classic_config(text: str) -> list[tuple[str, dict[str, str]]]:
    """Fluent Bit's classic format: [SECTION] headers, then `key value` lines (keys case-insensitive)."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            sections.append((header.group(1).upper(), {}))
            continue
        assert sections, f"fluent-bit.conf: {line!r} before any [SECTION]"
        key, _, value = line.partition(" ")
        sections[-1][1][key.lower()] = value.strip()
    return sections


def sections_named(config: list[tuple[str, dict]], section: str, plugin: str) -> list[dict]:
    return [keys for name, keys in config if name == section and keys.get("name") == plugin]

"""Monitoring: the job's Ray metrics on a real node's Prometheus endpoint, and cluster/monitoring/.

- the run's progress counter (a real Ray actor on the session's local cluster) exports images by
  status, entries not written by reason, faces and the run's heartbeat, with bounded tag values; the
  heartbeat goes when the run ends, the counters stay (what the stall alert relies on);
- the Grafana dashboard parses, and every metric its queries name exists: the job's own names come
  from jobs/progress.py, Ray's, the DCGM exporter's and the KubeRay operator's from the lists below
  (each with the page or source that documents it); the labels its selectors use exist too;
- the PodMonitor, ServiceMonitor and PrometheusRule have their required fields (small schemas of
  the Prometheus Operator's v1 API written here), the PodMonitor finds the Ray Pods of
  cluster/kuberay/ on KubeRay's metrics port, the alerts name known metrics;
- `kubectl kustomize cluster/monitoring` renders them and the dashboard ConfigMap for Grafana's sidecar.
Each check has a negative control where it could pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from cluster_files import KUBERAY, cluster_specs, load_docs, load_one, loads_docs, ray_containers
from jobs.progress import METRICS, OTHER, PROGRESS_ACTOR_PREFIX, ProgressCounter, RunMetrics
from img2pose_core.output import NOT_WRITTEN, STATUSES
from ray_fixtures import ray_head  # noqa: F401
from ray_metrics import discovery_targets, poll, run_values, scrape
from s3_fixtures import s3_server  # noqa: F401  (ray_head starts after the S3 server)

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "cluster" / "monitoring"
DASHBOARD = MONITORING / "img2pose-dashboard.json"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

# --- the metric names a query may use, and the labels of each ----------------------------------------

# Labels every series scraped from a Ray node carries (Ray adds the first five; Prometheus adds
# instance and job; the PodMonitor's relabelings add the ray_io_* ones).
RAY_NODE_LABELS = {"SessionName", "NodeAddress", "Version", "Component", "WorkerId", "instance", "job",
                   "ray_io_cluster", "ray_io_node_type", "ray_io_group", "namespace", "pod", "container"}  # fmt: skip
# The job's own metrics, as jobs/progress.py defines them (so that the dashboard cannot drift from the code).
OWN = {spec.exported: set(spec.tag_keys) | RAY_NODE_LABELS for spec in METRICS.values()}
# Ray's system metrics: https://docs.ray.io/en/latest/ray-observability/reference/system-metrics.html
# (ray_actors: Name = the actor class, State, plus Source and JobId seen on Ray 2.60's endpoint; the GPU
# gauges: ray/dashboard/modules/reporter/reporter_agent.py, GPU_TAG_KEYS).
RAY = {
    "ray_actors": {"Name", "State", "Source", "JobId"} | RAY_NODE_LABELS,
    "ray_node_gpus_utilization": {"GpuIndex", "GpuDeviceName"} | RAY_NODE_LABELS,
    "ray_node_gram_used": {"GpuIndex", "GpuDeviceName"} | RAY_NODE_LABELS,
}
# The DCGM exporter's default counters: https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv
# (labels: https://docs.nvidia.com/datacenter/dcgm/latest/reference/dcgm-exporter-metrics.html; pod,
# namespace and container name the Pod using the GPU, exported_* when the ServiceMonitor does not honour labels).
DCGM_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id", "DCGM_FI_DRIVER_VERSION",
               "pod", "namespace", "container", "exported_pod", "exported_namespace", "exported_container",
               "instance", "job", "service", "endpoint"}  # fmt: skip
DCGM = {"DCGM_FI_DEV_GPU_UTIL": DCGM_LABELS, "DCGM_FI_DEV_FB_USED": DCGM_LABELS, "DCGM_FI_DEV_FB_FREE": DCGM_LABELS}
# The KubeRay operator's RayJob metrics (KubeRay >= 1.4):
# https://docs.ray.io/en/latest/cluster/kubernetes/k8s-ecosystem/metrics-references.html and
# ray-operator/controllers/ray/metrics/ray_job_metrics.go.
KUBERAY_TARGET = {"instance", "job", "service", "endpoint", "pod", "container"}
KUBERAY_METRICS = {
    "kuberay_job_deployment_status": {"name", "namespace", "deployment_status"} | KUBERAY_TARGET,
    "kuberay_job_info": {"name", "namespace"} | KUBERAY_TARGET,
    "kuberay_job_execution_duration_seconds": {"name", "namespace", "job_deployment_status", "retry_count"} | KUBERAY_TARGET,
}
KNOWN = {**OWN, **RAY, **DCGM, **KUBERAY_METRICS}
# RayJob deployment statuses (ray-operator/apis/ray/v1/rayjob_types.go, JobDeploymentStatus).
DEPLOYMENT_STATUSES = {"", "Initializing", "Running", "Complete", "Failed", "ValidationFailed", "Suspending",
                       "Suspended", "Retrying", "Waiting"}  # fmt: skip

# --- PromQL, as far as needed to find the metric names and the labels a query uses --------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan", "atan2"}  # fmt: skip
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _strip_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana's $variables allowed) selects."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        if m.group(0) in _KEYWORDS or rest.startswith("("):  # a keyword, a function or an aggregation
            continue
        names.add(m.group(0))
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str], dict[str, str]]]:
    """(metric, label names, {label: value}) of every `metric{...}` selector of an expression."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{((?:[^{}\"]|\"(?:\\.|[^\"\\])*\")*)\}", expr):
        matchers = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"', m.group(2))
        out.append((m.group(1), {name for name, _, _ in matchers}, {name: value for name, _, value in matchers}))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^()]*)\)", _strip_strings(expr)):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def query_problems(where: str, expr: str) -> list[str]:
    """What in one query names a metric or a label that does not exist."""
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric in {expr!r}")
    for name in sorted(names - KNOWN.keys()):
        problems.append(f"{where}: unknown metric {name!r}")
    for metric, labels, _ in selector_labels(expr):
        if metric in KNOWN:
            for label in sorted(labels - KNOWN[metric]):
                problems.append(f"{where}: {metric} has no label {label!r}")
    every_label = set().union(*(KNOWN[n] for n in names if n in KNOWN)) if names else set()
    for label in sorted(grouping_labels(expr) - every_label):
        problems.append(f"{where}: groups by {label!r}, a label none of its metrics has")
    return problems


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values' selector)."""
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
            assert m, f"variable {var['name']}: not a label_values(selector, label) query: {query!r}"
            out.append((f"variable {var['name']}", m.group(1)))
            out.append((f"variable {var['name']} label", f"max by ({m.group(2)}) ({m.group(1)})"))
    return out


def dashboard_problems(dash: dict) -> list[str]:
    return [p for where, expr in dashboard_queries(dash) for p in query_problems(where, expr)]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# --- the dashboard ------------------------------------------------------------------------------------


def test_promql_reader_finds_metrics_and_labels():
    expr = ('sum by (status) (rate(ray_img2pose_images_total{status!="ok", run_id=~"$run_id"}[$__rate_interval]))'
            ' / on (run_id) group_left max(DCGM_FI_DEV_GPU_UTIL offset 5m) * 1048576 or vector(0)')  # fmt: skip
    assert metric_names(expr) == {"ray_img2pose_images_total", "DCGM_FI_DEV_GPU_UTIL"}
    assert selector_labels(expr)[0][:2] == ("ray_img2pose_images_total", {"status", "run_id"})
    assert grouping_labels(expr) == {"status", "run_id"}
    assert metric_names('max(x{a="sum(rate(y[5m]))"})') == {"x"}  # what a string holds is no metric


def test_dashboard_names_only_metrics_that_exist(dashboard):
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 15
    problems = dashboard_problems(dashboard)
    assert not problems, "\n".join(problems)


def test_dashboard_check_catches_a_wrong_metric_or_label(dashboard):
    """Negative controls: a misspelt metric, a label the metric does not have, a grouping by a label
    no metric has, each in one query of a copy, are found."""
    for old, new, expected in (
        ("ray_img2pose_images_total{", "ray_img2pose_image_total{", "unknown metric 'ray_img2pose_image_total'"),
        ('status!="ok"', 'state!="ok"', "has no label 'state'"),
        ("sum by (status)", "sum by (stage)", "groups by 'stage'"),
        ("DCGM_FI_DEV_GPU_UTIL{", "DCGM_FI_GPU_UTIL{", "unknown metric 'DCGM_FI_GPU_UTIL'"),
    ):
        broken = copy.deepcopy(dashboard)
        done = False
        for panel in broken["panels"]:
            for target in panel.get("targets", []):
                if not done and old in target["expr"]:
                    target["expr"] = target["expr"].replace(old, new, 1)
                    done = True
        assert done, f"no query holds {old!r}"
        problems = dashboard_problems(broken)
        assert any(expected in p for p in problems), (expected, problems)


def test_dashboard_shows_what_the_job_needs(dashboard):
    """images/s by status, failures by status, faces/s, GPU utilisation and memory, model actors alive,
    RayJob status; a Prometheus datasource variable; unique panel ids; a stable uid."""
    assert dashboard["uid"] == "img2pose-annotate" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in dashboard["panels"]}
    images, faces = METRICS["images"].exported, METRICS["faces"].exported

    def panels_with(*needles: str) -> list[str]:
        return [title for title, expr in exprs.items() if all(n in expr for n in needles)]

    assert panels_with(images, "rate(", "by (status)"), "no images/s by status"
    assert panels_with(images, 'status!="ok"', "by (status)"), "no failures by status"
    assert panels_with(faces, "rate("), "no faces/s"
    assert panels_with("DCGM_FI_DEV_GPU_UTIL"), "no GPU utilisation"
    assert panels_with("DCGM_FI_DEV_FB_USED"), "no GPU memory"
    assert panels_with("ray_actors", 'State="ALIVE"', "ModelStage"), "no model actors alive"
    assert panels_with("kuberay_job_deployment_status"), "no RayJob status"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_ray_gpu_metrics_exist_in_the_installed_ray():
    """The Ray GPU gauges the dashboard falls back to (EC2, no DCGM exporter) are defined by this Ray."""
    import ray

    source = (Path(ray.__file__).parent / "dashboard" / "modules" / "reporter" / "reporter_agent.py").read_text()
    for name in ("ray_node_gpus_utilization", "ray_node_gram_used"):
        assert f'"{name.removeprefix("ray_")}"' in source, name
    assert '"node_gpus_utilisation"' not in source  # negative control: the check reads real names


# --- the Prometheus Operator objects -----------------------------------------------------------------

_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                            "lowercase", "uppercase", "keepequal", "dropequal"]},  # fmt: skip
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "modulus": {"type": "integer"},
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "minProperties": 1,
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL},
        "metricRelabelings": {"type": "array", "items": _RELABEL},
    },
}


def _object(kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string"}, "labels": {"type": "object"}}},  # fmt: skip
            "spec": spec,
        },
    }


# Written from the Prometheus Operator's API reference (monitoring.coreos.com/v1), for the fields used here:
# https://prometheus-operator.dev/docs/api-reference/api/ (PodMonitorSpec, ServiceMonitorSpec, PrometheusRuleSpec).
SCHEMAS = {
    "PodMonitor": _object("PodMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
        "properties": {"selector": _LABEL_SELECTOR, "namespaceSelector": _NAMESPACE_SELECTOR, "jobLabel": {"type": "string"},
                       "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}},
    }),
    "ServiceMonitor": _object("ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {"selector": _LABEL_SELECTOR, "namespaceSelector": _NAMESPACE_SELECTOR, "jobLabel": {"type": "string"},
                       "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}},
    }),
    "PrometheusRule": _object("PrometheusRule", {
        "type": "object", "additionalProperties": False, "required": ["groups"],
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "rules"],
            "properties": {"name": {"type": "string"}, "interval": _DURATION, "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["expr"],
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                               "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                               "keep_firing_for": _DURATION,
                               "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                               "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
            }}},
        }}},
    }),
}  # fmt: skip


def schema_errors(doc: dict) -> list[str]:
    validator = Draft202012Validator(SCHEMAS[doc["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def monitoring_objects() -> dict[str, dict]:
    out = {}
    for path in sorted(MONITORING.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            assert doc["kind"] not in out, f"two {doc['kind']} objects"
            out[doc["kind"]] = doc
    return out


def test_monitoring_objects_have_their_required_fields():
    objects = monitoring_objects()
    assert set(objects) == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    for kind, doc in objects.items():
        errors = schema_errors(doc)
        assert not errors, f"{kind}:\n  " + "\n  ".join(errors)
        # kube-prometheus-stack's Prometheus selects monitors and rules by its release label by default.
        assert doc["metadata"]["labels"].get("release") == "kube-prometheus-stack", kind


def test_schemas_catch_a_broken_object():
    """Negative controls: a monitor without selector, a misspelt endpoint field, a rule without expr,
    a bad duration, an unknown relabel action."""
    objects = monitoring_objects()
    no_selector = copy.deepcopy(objects["PodMonitor"])
    del no_selector["spec"]["selector"]
    assert any("selector" in e for e in schema_errors(no_selector))
    typo = copy.deepcopy(objects["ServiceMonitor"])
    typo["spec"]["endpoints"][0]["honourLabels"] = True
    assert any("honourLabels" in e for e in schema_errors(typo))
    no_expr = copy.deepcopy(objects["PrometheusRule"])
    del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("expr" in e for e in schema_errors(no_expr))
    bad_for = copy.deepcopy(objects["PrometheusRule"])
    bad_for["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    assert schema_errors(bad_for)
    bad_action = copy.deepcopy(objects["PodMonitor"])
    bad_action["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    assert schema_errors(bad_action)


def test_pod_monitor_finds_the_ray_pods_on_kuberays_metrics_port():
    """KubeRay gives every Ray container `ray start --metrics-export-port=8080` and a container port
    named `metrics` (8080) unless the template sets them (ray-operator/controllers/ray/common/pod.go,
    utils.MetricsPortName / DefaultMetricsPort). The PodMonitor's selector must match the labels of
    every Ray Pod template of cluster/kuberay/, and none of them may move the port."""
    monitor = monitoring_objects()["PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.get("ray.io/is-ray-node") == "yes"  # set by KubeRay on Ray Pods only
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    specs = cluster_specs()
    assert specs
    own = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
    assert own, "the selector takes every Ray Pod of the namespace, not this project's"
    for label, spec in specs:
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for group, g in groups:
            labels = (g["template"].get("metadata") or {}).get("labels") or {}
            assert own.items() <= labels.items(), f"{label} {group}: Pod labels {labels} miss {own}"
            params = g.get("rayStartParams") or {}
            assert params.get("metrics-export-port", "8080") == "8080", f"{label} {group}: metrics port moved"
        for group, _, container in ray_containers(spec):
            for port in container.get("ports", []):
                if port.get("name") == "metrics":
                    assert port["containerPort"] == 8080, f"{label} {group}"
    # Negative control: a Pod template without the project's label would not be scraped.
    assert not own.items() <= {"app.kubernetes.io/name": "someone-else"}.items()


def test_operator_service_monitor_keeps_the_rayjobs_labels():
    monitor = monitoring_objects()["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    (endpoint,) = monitor["spec"]["endpoints"]
    # The chart's Service port is `http` (8080); without honorLabels the RayJob's `namespace` label would
    # be renamed exported_namespace and the alerts' `by (namespace, name)` would name the operator's.
    assert endpoint["port"] == "http" and endpoint["honorLabels"] is True


def test_alerts_name_known_metrics_and_cover_a_failed_rayjob_and_a_stalled_run():
    rules = {r["alert"]: r for g in monitoring_objects()["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    problems = [p for name, rule in rules.items() for p in query_problems(f"alert {name}", rule["expr"])]
    assert not problems, "\n".join(problems)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    failed = rules["Img2poseRayJobFailed"]["expr"]
    assert "kuberay_job_deployment_status" in failed
    ((_, _, values),) = selector_labels(failed)
    statuses = set(values["deployment_status"].split("|"))
    assert "Failed" in statuses and statuses <= DEPLOYMENT_STATUSES, statuses
    stalled = rules["Img2poseRunStalled"]["expr"]
    assert METRICS["images"].exported in stalled and METRICS["run_active"].exported in stalled
    assert "increase(" in stalled and "== 0" in stalled
    # Negative control: a rule on a metric nobody exports is reported.
    assert query_problems("x", 'kuberay_rayjob_status{status="Failed"} > 0')


def test_kustomize_renders_the_monitoring_objects_and_the_dashboard_configmap(dashboard):
    if not Path(KUBECTL).is_file():
        pytest.skip(f"kubectl is absent ({KUBECTL}): cannot render cluster/monitoring")
    proc = subprocess.run([KUBECTL, "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = loads_docs(proc.stdout)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"], kinds
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    # kube-prometheus-stack's Grafana sidecar imports ConfigMaps labelled grafana_dashboard: "1"
    # (its values.yaml: grafana.sidecar.dashboards.label / labelValue, searchNamespace: ALL).
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["name"] == "img2pose-grafana-dashboard"  # no hash suffix: a stable name
    assert json.loads(cm["data"]["img2pose-dashboard.json"]) == dashboard
    # The kustomization is the monitoring's own, not cluster/kuberay's.
    assert "monitoring" not in (KUBERAY / "kustomization.yaml").read_text()
    assert load_one(MONITORING / "kustomization.yaml")["resources"]


def test_the_runbook_names_the_metrics_the_wiring_and_the_alerts():
    """docs/operations.md's Monitoring section names every metric of the job (from the code), every
    alert (from alerts.yaml), the kustomization, and its EC2 command for the rule file works."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### Metrics, dashboard and alerts"):text.index("## Two forms of output")]
    for spec in METRICS.values():
        assert f"`{spec.exported}`" in section, spec.exported
    assert "`ray_img2pose_nothing_total`" not in section  # the control
    for group in monitoring_objects()["PrometheusRule"]["spec"]["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in section, rule["alert"]
    assert "kubectl apply -k cluster/monitoring/" in section and "grafana_dashboard" in section
    (command,) = [line for line in section.splitlines() if line.startswith('python -c "import yaml;')]
    command = command.removesuffix(" > img2pose-rules.yml")
    assert command.startswith("python -c ") and command.count('"') == 2
    code = command[len("python -c "):].strip('"')
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rules = yaml.safe_load(proc.stdout)
    wrapped = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"}, "spec": rules}
    assert not schema_errors(wrapped) and [g["name"] for g in rules["groups"]] == ["img2pose.rayjob", "img2pose.run"]


# --- the job's metrics on a real Ray node ---------------------------------------------------------------

_DRIVER = r"""
import json, os, sys
import ray
from jobs.progress import PROGRESS_ACTOR_PREFIX, ProgressCounter, batch_counts, status_counts

run_id, out = sys.argv[1], sys.argv[2]
ray.init(logging_level="ERROR")
# As jobs/run.py makes it: named after the run, no arguments.
counter = ray.remote(ProgressCounter).options(name=PROGRESS_ACTOR_PREFIX + run_id, num_cpus=0).remote()
for statuses, faces in ((["ok"] * 5 + ["unreadable"] * 2 + ["duplicate", "skipped"], 7),
                        (["ok", "too_small", "made_up_status"], 3)):
    ray.get(counter.add.remote(batch_counts(statuses, faces), status_counts(statuses)))
nodes = [{"ip": n["NodeManagerAddress"], "port": n["MetricsExportPort"]} for n in ray.nodes() if n["Alive"]]
snapshot = ray.get(counter.snapshot.remote())
with open(out + ".tmp", "w") as fh:
    json.dump({"nodes": nodes, "snapshot": snapshot}, fh)
os.replace(out + ".tmp", out)
sys.stdin.readline()  # the run goes on until the test has looked
"""


def test_the_run_counter_exports_its_metrics_on_the_nodes_endpoint(ray_head, tmp_path):
    run_id = f"mon-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "driver.json"
    with open(tmp_path / "driver.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER, run_id, str(out)], env=ray_head.env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, text=True)  # fmt: skip
    try:

        def driver_ready():
            if out.is_file():
                return json.loads(out.read_text())
            assert proc.poll() is None, "the driver ended:\n" + (tmp_path / "driver.err").read_text()[-3000:]
            return None

        info = poll("the driver's counter", driver_ready, timeout_s=120)
        # The progress counts and the metrics come from the same adds.
        # "skipped" (done by an earlier run) is counted apart from the other entries without a row.
        assert info["snapshot"] == {"ok": 6, "failed": 4, "counted": 1, "skipped": 1, "faces": 10}
        nodes = [f"{n['ip']}:{n['port']}" for n in info["nodes"] if n["port"] and n["port"] > 0]
        assert nodes, info
        # The head's service-discovery file (what a Prometheus on an EC2 head reads) lists every node's endpoint.
        def listed():
            targets = discovery_targets(ray_head.temp_dir)
            return targets if set(nodes) <= set(targets) else None

        # (it also lists the head's autoscaler and dashboard metrics ports, 44217 and 44227 by default)
        poll("the service-discovery file listing every node", listed)
        # and the head writes a Prometheus configuration that reads that file (docs: EC2 without Kubernetes).
        config = ray_head.temp_dir / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
        assert "prom_metrics_service_discovery.json" in config.read_text() and "file_sd_configs" in config.read_text()
        images, not_written = METRICS["images"].exported, METRICS["not_written"].exported
        faces, active = METRICS["faces"].exported, METRICS["run_active"].exported

        def exported():
            samples = scrape(nodes)  # Ray exports every few seconds: wait for the second batch
            return samples if run_values(samples, images, run_id, "status").get("ok") == 6 else None

        samples = poll(f"{images}{{run_id={run_id!r}, status='ok'}} == 6 on a node's endpoint", exported)
        assert run_values(samples, images, run_id, "status") == {"ok": 6, "unreadable": 2, "too_small": 1, OTHER: 1}
        assert run_values(samples, not_written, run_id, "reason") == {"duplicate": 1, "skipped": 1}
        assert run_values(samples, faces, run_id) == {None: 10}
        assert run_values(samples, active, run_id) == {None: 1}
        # Bounded tag values: every status is a known one or "other"; the unknown status is no label value.
        assert {s.labels["status"] for s in samples if s.name == images} <= set(STATUSES) | {OTHER}
        assert not [s for s in samples if "made_up_status" in s.labels.values()]
        # Negative controls: a status and a reason that were not recorded, a run that never ran.
        assert "corrupt" not in run_values(samples, images, run_id, "status")
        assert "marker" not in run_values(samples, not_written, run_id, "reason") and "marker" in NOT_WRITTEN
        assert not run_values(samples, images, "never-ran", "status")
        # Ray's own actor metric, as the dashboard reads it (Name = the actor's class, State ALIVE); the
        # GCS exports it on its own schedule.
        def counter_alive():
            alive = [x.value for x in scrape(nodes) if x.name == "ray_actors" and x.labels.get("State") == "ALIVE"
                     and x.labels.get("Name") == "ProgressCounter"]  # fmt: skip
            return alive if sum(alive) >= 1 else None

        poll("ray_actors{Name='ProgressCounter', State='ALIVE'} >= 1", counter_alive)
        # Every sample of ours carries only the tags the code declares, plus Ray's node labels.
        ours = {spec.exported: spec for spec in METRICS.values()}
        for s in samples:
            if s.name in ours:
                assert set(s.labels) <= set(ours[s.name].tag_keys) | RAY_NODE_LABELS | {"otel_scope_name",
                    "otel_scope_schema_url", "otel_scope_version"}, s  # fmt: skip
    finally:
        proc.stdin.close()  # the run ends: its driver, then its counter actor
        proc.wait(timeout=120)

    def heartbeat_gone():
        samples = scrape(nodes)
        return samples if not run_values(samples, active, run_id) else None

    # The heartbeat goes with the run; the counters stay (which is why the stall alert needs it).
    samples = poll(f"{active}{{run_id={run_id!r}}} gone after the run ended", heartbeat_gone, timeout_s=120, every_s=2)
    assert run_values(samples, images, run_id, "status").get("ok") == 6


def test_metrics_never_fail_the_counter():
    """Outside a Ray actor no metrics are made and counting works; a metric Ray refuses to record (a
    tag value that is not a string: Ray's own TypeError) is skipped, the batch still counted."""
    counter = ProgressCounter()
    assert counter.metrics is None
    counter.add({"ok": 2, "failed": 1, "counted": 0, "faces": 4}, {"ok": 2, "corrupt": 1})
    assert counter.snapshot() == {"ok": 2, "failed": 1, "counted": 0, "faces": 4, "skipped": 0}
    metrics = RunMetrics("unit-run", heartbeat_s=0.05)
    try:
        with pytest.raises(TypeError):  # the control: Ray really refuses it
            metrics.metrics["faces"].inc(1, tags={"run_id": 5})
        metrics.tags = {"run_id": 5}
        metrics.record({"ok": 1, "faces": 2}, {"ok": 1, "weird": 3})
        metrics.record({"ok": 1, "failed": 1, "faces": 0})
    finally:
        metrics.close()
    assert not metrics._thread.is_alive()


def test_the_run_names_its_counter_as_the_metrics_expect():
    """The counter takes its run_id tag from its actor's name: jobs/run.py must name it PREFIX + run id."""
    source = (ROOT / "jobs" / "run.py").read_text()
    assert f'"{PROGRESS_ACTOR_PREFIX}{{run_id}}"' in source or "PROGRESS_ACTOR_PREFIX" in source
    assert '"img2pose-counter-{run_id}"' not in source  # the control: the check reads real text

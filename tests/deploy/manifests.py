"""Rendered Kubernetes manifests and what the deploy checks need to read from them.

Nothing here talks to a cluster: overlays are rendered with ``kubectl kustomize`` and read as
plain dictionaries.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gpu", "prod", "airgapped")
#: Overlays with the production hardening (components/prod): TLS and tokens, an external Redis.
PROD_OVERLAYS = ("prod", "airgapped")
#: Where each overlay's servers and workers find their models: the image's /opt/genoserve/models
#: (served as at start), a PersistentVolumeClaim, or S3-compatible object storage (both followed).
MODEL_SOURCES = {"dev": "image", "gpu": "volume", "prod": "store", "airgapped": "image"}
#: Example values of the Secrets an operator creates out of band (deploy/README.md, "Secrets"):
#: what the checks put in a container's environment where the overlay renders no such Secret.
EXAMPLE_SECRETS = {
    "genoserve-redis": {
        "url": "rediss://:PASSWORD@redis.example.internal:6380/0",
        "address": "redis.example.internal:6380",
        "password": "PASSWORD",
    },
    "genoserve-model-store": {
        "repository": "s3://genoserve-models/models",
        "endpoint": "https://minio.example.internal:9000",
        "region": "eu-west-1",
        "allow_http": "false",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "EXAMPLE",
    },
}
SCHEMAS = K8S / "schemas"
#: Kinds that the API server does not know without a CRD; validated against SCHEMAS.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
}
#: The gRPC service a family's server must report SERVING before it takes traffic ("" for platform:
#: the whole server, which needs at least one model ready).
FAMILY_SERVICES = {
    "platform": "",
    "binding": "genoserve.v1.SequenceBinding",
    "variants": "genoserve.v1.VariantCalling",
    "segmentation": "genoserve.v1.Segmentation",
    "embedding": "genoserve.v1.CellEmbedding",
}
GPU_FAMILIES = ("binding", "variants", "segmentation", "embedding")

Obj = dict[str, Any]


def tool(name: str) -> str:
    """A command-line tool the checks need; ``make setup`` installs every one of them."""
    venv = REPO / ".venv" / "bin" / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make setup`")
    return found


@functools.cache
def rendered_text(overlay: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {result.stderr}")
    return result.stdout


def render(overlay: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"{kind}/{name}: {len(matches)} objects rendered")
    return matches[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def component(workload: Obj) -> str:
    return str(workload["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def family(workload: Obj) -> str:
    return str(workload["metadata"]["labels"].get("genoserve.io/family", ""))


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` (or ``--name value``) in a container's args."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def secret_value(objects: list[Obj], name: str, key: str) -> str:
    secret = find(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def config_settings(objects: list[Obj]) -> Obj:
    """The genoserve.yaml every pod mounts (from the genoserve-config ConfigMap)."""
    [config] = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("genoserve-config")]
    settings: Obj = yaml.safe_load(config["data"]["genoserve.yaml"])
    return settings


def container_env(
    objects: list[Obj], container: Obj, secrets: Mapping[str, Mapping[str, str]] = EXAMPLE_SECRETS
) -> dict[str, str]:
    """The environment a container's ``env`` gives it: literal values, and Secret keys from the
    overlay's rendered Secrets, else from ``secrets`` (the Secrets created out of band). A key
    missing from both fails, unless the reference is ``optional``: then the variable is unset, as
    the kubelet leaves it."""
    env: dict[str, str] = {}
    rendered = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise AssertionError(f"env {name}: only values and secretKeyRef are read here: {item}")
        if ref["name"] in rendered:
            env[name] = secret_value(objects, ref["name"], ref["key"])
        elif ref["key"] in secrets.get(ref["name"], {}):
            env[name] = secrets[ref["name"]][ref["key"]]
        elif not ref.get("optional", False):
            raise AssertionError(f"env {name}: Secret {ref['name']} key {ref['key']} is required and has no value")
    return env


#: The Dockerfile's final targets: without models (the repository is object storage or a volume)
#: and with the repository's models/ at /opt/genoserve/models (air-gapped sites, dev).
MODEL_FREE_STAGES = ("cpu", "gpu")
MODELS_STAGES = ("cpu-models", "gpu-models")


def image_stage_of(container: Obj) -> str:
    """The Dockerfile stage a genoserve container's image was built from (its tag's suffix:
    ``0.1.0-gpu`` -> ``gpu``, ``0.1.0-cpu-models`` -> ``cpu-models``)."""
    tag = container["image"].rsplit(":", 1)[-1]
    found = re.search(r"-((?:cpu|gpu)(?:-models)?)$", tag)
    if found is None:
        raise AssertionError(f"image {container['image']}: its tag names no Dockerfile target")
    return found.group(1)


class ImageStage(NamedTuple):
    entrypoint: list[str]
    env: dict[str, str]
    workdir: str


def dockerfile_stage(stage: str) -> ImageStage:
    """ENTRYPOINT, ENV and WORKDIR of one final stage of deploy/docker/Dockerfile (with what it
    inherits from the stage it is built ``FROM``, as ``FROM cpu AS cpu-models``)."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = text.splitlines()
    header = re.compile(rf"FROM (\S+) AS {re.escape(stage)}$")
    starts = [(i, m) for i, line in enumerate(lines) if (m := header.match(line.strip()))]
    if len(starts) != 1:
        raise AssertionError(f"deploy/docker/Dockerfile: {len(starts)} stages named {stage}")
    [(start, match)] = starts
    base = match.group(1)
    if any(re.match(rf"FROM \S+ AS {re.escape(base)}$", line.strip()) for line in lines[:start]):
        inherited = dockerfile_stage(base)
        entrypoint, env, workdir = list(inherited.entrypoint), dict(inherited.env), inherited.workdir
    else:
        entrypoint, env, workdir = [], {}, "/"
    for line in lines[start + 1 :]:
        line = line.strip()
        if line.startswith("FROM "):
            break
        if line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT ") :])
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        if line.startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\S+)", line[len("ENV ") :]):
                env[name] = value
    return ImageStage(entrypoint, env, workdir)


def metric_names_in(expr: str) -> set[str]:
    """genoserve_* metric names an expression reads (with their _total/_bucket/... suffixes)."""
    return set(re.findall(r"\bgenoserve_[a-z0-9_]+\b", expr))


def alert_rules() -> list[Obj]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> Obj:
    board: Obj = json.loads((DEPLOY / "grafana" / "genoserve-dashboard.json").read_text())
    return board


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]

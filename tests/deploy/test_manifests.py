"""Offline checks of everything under deploy/: images, rendered overlays, schemas, policy, rules.

Policy (every overlay, every container): non-root, read-only root filesystem, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, no service-account token, requests
and limits, a pinned image, probes; plus the genoserve-specific rules of deploy/README.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from genoserve.cli import main as cli_main
from genoserve.cli.main import cli
from genoserve.core import metrics
from genoserve.core.settings import Settings, load_settings
from genoserve.jobs.celery_app import FAMILY_QUEUES
from genoserve.runtime import gpu_metrics
from genoserve.runtime.store import LocalStore, S3Store, open_store
from tests.deploy.manifests import (
    CRD_KINDS,
    DEPLOY,
    EXAMPLE_SECRETS,
    FAMILY_SERVICES,
    GPU_FAMILIES,
    MODEL_FREE_STAGES,
    MODEL_SOURCES,
    MODELS_STAGES,
    OVERLAYS,
    PROD_OVERLAYS,
    REPO,
    SCHEMAS,
    Obj,
    alert_rules,
    by_kind,
    component,
    config_settings,
    container_env,
    containers,
    dashboard_targets,
    dockerfile_stage,
    family,
    find,
    flag,
    image_stage_of,
    metric_names_in,
    pod_spec,
    render,
    rendered_text,
    tool,
    workloads,
)

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, cwd=REPO)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def objects(overlay: str) -> list[Obj]:
    return render(overlay)


def genoserve_workloads(objects: list[Obj]) -> Iterator[Obj]:
    yield from (w for w in workloads(objects) if component(w) in ("server", "worker"))


# -- images -------------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    result = run(tool("hadolint"), "--failure-threshold", "warning", str(DEPLOY / "docker" / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_final_stages_run_as_non_root_without_torch_or_compilers() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    finals = {s.split()[2]: s for s in stages if s.split()[2] in (*MODEL_FREE_STAGES, *MODELS_STAGES)}
    assert set(finals) == {*MODEL_FREE_STAGES, *MODELS_STAGES}
    for name, stage in finals.items():
        for banned in ("torch", "gcc", "build-essential", "pip install"):
            assert banned not in stage, f"final stage {name} installs {banned}"
    for name in MODEL_FREE_STAGES:
        stage = finals[name]
        assert "USER 10001:10001" in stage, name
        assert "COPY --chown=root:root models " not in stage, f"{name}: the model-free image copies the models"
        assert IMAGE_MODELS not in stage, f"{name}: the model-free image names {IMAGE_MODELS}"
    for name in MODELS_STAGES:
        # FROM cpu/gpu (so the same venv and user), plus the models, root-owned, and nothing else.
        stage = finals[name]
        assert stage.split()[0] == name.removesuffix("-models"), f"{name} is not built FROM its model-free image"
        body = [line for line in stage.splitlines()[1:] if line.strip() and not line.startswith("#")]
        assert body == [f"COPY --chown=root:root models {IMAGE_MODELS}", f"ENV GENOSERVE_MODEL_DIR={IMAGE_MODELS}"], (
            name,
            body,
        )
    for line in re.findall(r"(?m)^ARG \w+_IMAGE=(\S+)$", text):
        assert ":" in line
        assert not line.endswith(":latest"), line


def test_image_pins_cover_every_serving_dependency() -> None:
    """deploy/docker/requirements.txt (``make deploy-lock``) pins every runtime dependency."""
    pins = {
        line.split("==")[0]
        for line in (DEPLOY / "docker" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in declared}
    assert names <= pins, f"run `make deploy-lock`: unpinned {sorted(names - pins)}"


# -- rendering and schemas ----------------------------------------------------------------------


def test_monitoring_copies_are_in_sync() -> None:
    result = run(sys.executable, str(DEPLOY / "sync.py"), "--check")
    assert result.returncode == 0, result.stderr


def test_builtin_kinds_validate_strictly(overlay: str, tmp_path: Any) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(rendered_text(overlay))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.30.0", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = {m for m in re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)}
    assert unknown <= {kind for _, kind in CRD_KINDS}, f"kinds validated by nothing: {unknown}"


def validator(path: str) -> jsonschema.Draft7Validator:
    """The stored schemas are Kubernetes structural schemas; their ``pattern`` regexes are Go's
    (RE2), so the schema itself is not checked against Python's regex dialect."""
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / path).read_text()))


def test_custom_resources_validate_against_their_published_schemas(objects: list[Obj]) -> None:
    seen = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if "/" in obj["apiVersion"] and obj["apiVersion"].split("/")[0].endswith((".coreos.com", "keda.sh")):
            assert key in CRD_KINDS, f"no stored schema for {key}"
        if key in CRD_KINDS:
            validator(CRD_KINDS[key]).validate(obj)
            seen.add(key[1])
    assert {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"} <= seen


def test_a_wrong_field_in_a_custom_resource_is_caught() -> None:
    scaled = find(render("dev"), "ScaledObject", "genoserve-worker-binding")
    scaled["spec"]["minReplicas"] = 1  # an HPA field name, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validator(CRD_KINDS[("keda.sh/v1alpha1", "ScaledObject")]).validate(scaled)


# -- policy: every container ------------------------------------------------------------------------


def test_every_pod_is_locked_down(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("serviceAccountName") == "genoserve", name
        assert not any(spec.get(host) for host in ("hostNetwork", "hostPID", "hostIPC")), name
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for container in containers(workload):
            where = f"{name} container {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("runAsNonRoot") is True, where
            assert not security.get("privileged"), where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(bound, {}), f"{where}: no {bound}.{resource}"
            image = container["image"]
            assert re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), f"{where}: image {image} has no tag"
            assert not image.endswith(":latest"), f"{where}: {image}"
            assert "livenessProbe" in container, f"{where}: no liveness probe"
            # Read-only root: /tmp must be a writable emptyDir.
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: no /tmp volume"
            assert "emptyDir" in volumes[tmp[0]["name"]], where


def test_genoserve_images_are_this_version(objects: list[Obj], overlay: str) -> None:
    """GPU families on the GPU image but in dev; the image holds the models only where the overlay
    serves the image's (dev, airgapped: the -models targets); the others read a store or volume."""
    for workload in genoserve_workloads(objects):
        for container in containers(workload):
            tag = container["image"].rsplit(":", 1)[1]
            gpu = overlay != "dev" and family(workload) in GPU_FAMILIES
            suffix = "-models" if MODEL_SOURCES[overlay] == "image" else ""
            expected = f"{VERSION}-{'gpu' if gpu else 'cpu'}{suffix}"
            assert tag == expected, f"{overlay} {workload['metadata']['name']}: {tag}, expected {expected}"
            assert image_stage_of(container) in (MODELS_STAGES if suffix else MODEL_FREE_STAGES)


# -- genoserve's own rules ------------------------------------------------------------------------------


def test_one_server_and_one_worker_per_family(objects: list[Obj]) -> None:
    deployments = by_kind(objects, "Deployment")
    for role in ("server", "worker"):
        families = sorted(family(d) for d in deployments if component(d) == role)
        assert families == sorted(FAMILY_QUEUES), f"{role}s: {families}"


def test_servers_probe_the_health_port_and_drain(objects: list[Obj]) -> None:
    settings = config_settings(objects)
    grace = settings["server"]["grace_period_s"]
    for server in (d for d in by_kind(objects, "Deployment") if component(d) == "server"):
        name = server["metadata"]["name"]
        [container] = pod_spec(server)["containers"]
        args = container["args"]
        assert container["command"] == dockerfile_stage("cpu").entrypoint, (
            f"{name}: command is not the image entrypoint"
        )
        assert args[0] == "serve"
        assert flag(args, "family") == family(server), name
        health_port = int(flag(args, "health-port") or 0)
        assert health_port, f"{name}: no --health-port for the probes"
        service = FAMILY_SERVICES[family(server)]
        for probe in ("startupProbe", "readinessProbe"):
            grpc = container[probe]["grpc"]
            assert grpc["port"] == health_port, f"{name} {probe}"
            assert grpc.get("service", "") == service, f"{name} {probe}: {grpc}"
        assert container["livenessProbe"]["grpc"] == {"port": health_port, "service": "liveness"}, name
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, f"{name}: startup probe too short"
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod_spec(server)["terminationGracePeriodSeconds"] > grace + pre_stop, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == int(flag(args, "port") or 0)
        assert ports["metrics"] == int(flag(args, "metrics-port") or 0)
        assert flag(args, "host") == "0.0.0.0"


def test_servers_have_a_headless_service_an_hpa_and_a_pdb(objects: list[Obj]) -> None:
    for server in (d for d in by_kind(objects, "Deployment") if component(d) == "server"):
        name = server["metadata"]["name"]
        assert "replicas" not in server["spec"], f"{name}: replicas fights the HPA"
        service = find(objects, "Service", name)
        assert service["spec"]["clusterIP"] == "None", f"{name}: gRPC needs a headless Service"
        assert service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
        assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
        assert find(objects, "HorizontalPodAutoscaler", name)["spec"]["scaleTargetRef"]["name"] == name
        pdb = find(objects, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == server["spec"]["selector"]["matchLabels"]


def test_workers_consume_their_queue_and_finish_their_shard(objects: list[Obj]) -> None:
    settings = config_settings(objects)
    visibility = settings["jobs"]["visibility_timeout_s"]
    for worker in (d for d in by_kind(objects, "Deployment") if component(d) == "worker"):
        name = worker["metadata"]["name"]
        spec = pod_spec(worker)
        [container] = spec["containers"]
        args = container["args"]
        assert container["command"] == dockerfile_stage("cpu").entrypoint
        assert args[0] == "worker"
        assert flag(args, "queues") == family(worker), name
        # Warm shutdown lets the running shard finish; Redis must not redeliver it meanwhile.
        assert 3600 <= spec["terminationGracePeriodSeconds"] < visibility, name
        env = {e["name"]: e for e in container["env"]}
        metrics_dir = env["GENOSERVE_WORKER__METRICS_DIR"]["value"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == metrics_dir]
        assert "emptyDir" in {v["name"]: v for v in spec["volumes"]}[mount["name"]], name
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert int(flag(args, "metrics-port") or 0) == container["ports"][0]["containerPort"]
        scaled = find(objects, "ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == family(worker), "KEDA must watch the worker's Celery queue"
        assert trigger["authenticationRef"]["name"] == "genoserve-redis"
        assert find(objects, "PodDisruptionBudget", name)


def test_redis_url_comes_from_the_secret(objects: list[Obj]) -> None:
    for workload in genoserve_workloads(objects):
        env = {e["name"]: e for e in pod_spec(workload)["containers"][0]["env"]}
        ref = env["GENOSERVE_BROKER_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "genoserve-redis", "key": "url"}, workload["metadata"]["name"]
    auth = find(objects, "TriggerAuthentication", "genoserve-redis")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {"genoserve-redis"}


def test_redis_in_dev_and_gpu_external_in_prod_and_airgapped(objects: list[Obj], overlay: str) -> None:
    statefulsets = by_kind(objects, "StatefulSet")
    if overlay in PROD_OVERLAYS:
        assert not statefulsets
        assert not [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "genoserve-redis"], (
            f"{overlay}'s Redis Secret is created out of band, never rendered"
        )
        return
    redis = find(objects, "StatefulSet", "genoserve-redis")
    [container] = pod_spec(redis)["containers"]
    args = container["args"]
    assert flag(args, "appendonly") == "yes"
    assert flag(args, "maxmemory-policy") == "noeviction"
    assert flag(args, "dir") == "/data"
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in container["volumeMounts"])
    url = find(objects, "Secret", "genoserve-redis")
    assert url["metadata"]["name"] == "genoserve-redis"


def test_network_policies(objects: list[Obj], overlay: str) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    deny = policies["genoserve-default-deny-ingress"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    scrape = policies["genoserve-metrics-scrape"]
    [rule] = scrape["ingress"]
    assert {p["port"] for p in rule["ports"]} == {9095, 9096}
    assert [source["podSelector"]["matchLabels"] for source in rule["from"]] == [
        {"app.kubernetes.io/name": "prometheus"}
    ]
    grpc = policies["genoserve-server-grpc"]
    assert [p["port"] for r in grpc["ingress"] for p in r["ports"]] == [50051], "only gRPC is open to clients"
    if overlay not in PROD_OVERLAYS:
        [redis_rule] = policies["genoserve-redis"]["ingress"]
        clients = [s for s in redis_rule["from"] if "namespaceSelector" not in s]
        assert clients == [{"podSelector": {"matchLabels": {"genoserve.io/redis-client": "true"}}}]
    labelled = [w for w in workloads(objects) if pod_spec(w) and w["spec"]["template"]["metadata"]["labels"].get(
        "genoserve.io/redis-client") == "true"]  # fmt: skip
    assert {component(w) for w in labelled} == {"server", "worker"}


def test_gpu_families_get_a_gpu_on_gpu_nodes(objects: list[Obj], overlay: str) -> None:
    for workload in genoserve_workloads(objects):
        spec = pod_spec(workload)
        limits = spec["containers"][0]["resources"]["limits"]
        wants_gpu = overlay != "dev" and family(workload) in GPU_FAMILIES
        assert ("nvidia.com/gpu" in limits) == wants_gpu, workload["metadata"]["name"]
        if wants_gpu:
            assert limits["nvidia.com/gpu"] == "1"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    if overlay != "dev":
        segmentation = find(objects, "Deployment", "genoserve-server-segmentation")
        terms = pod_spec(segmentation)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.memory"


def test_prod_servers_use_tls_and_tokens(overlay: str, objects: list[Obj]) -> None:
    for server in (d for d in by_kind(objects, "Deployment") if component(d) == "server"):
        env = {e["name"] for e in pod_spec(server)["containers"][0]["env"]}
        tls = {"GENOSERVE_SERVER__TLS__CERT_FILE", "GENOSERVE_SERVER__TLS__KEY_FILE", "GENOSERVE_TOKENS_FILE"}
        assert (tls <= env) == (overlay in PROD_OVERLAYS), server["metadata"]["name"]
        secrets = {v["secret"]["secretName"] for v in pod_spec(server)["volumes"] if "secret" in v}
        assert (secrets == {"genoserve-tls", "genoserve-tokens"}) == (overlay in PROD_OVERLAYS), secrets


def test_container_args_parse_with_the_cli(objects: list[Obj]) -> None:
    """Every server and worker command line is accepted by ``genoserve`` itself (the smoke test
    also runs the dev ones)."""
    for workload in genoserve_workloads(objects):
        [container] = pod_spec(workload)["containers"]
        args = list(container["args"])
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, args
        config = flag(args, "config")
        args = [a for a in args[1:] if not a.startswith("--config")]  # the file exists only in the pod
        command.make_context(args[0] if args else "genoserve", args, resilient_parsing=False)
        assert config == "/etc/genoserve/genoserve.yaml"


# -- where the models come from ------------------------------------------------------------------------

STORE_SECRET = "genoserve-model-store"
CACHE_DIR = "/var/cache/genoserve/models"
#: Where the Dockerfile copies models/ into the -models images.
IMAGE_MODELS = "/opt/genoserve/models"
#: The model-free images' model folder: where a volume with the models is mounted (model-volume).
VOLUME_MODELS = "/models"


def overlays_reading(source: str) -> list[str]:
    return [name for name, where in MODEL_SOURCES.items() if where == source]


def env_items(workload: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in pod_spec(workload)["containers"][0]["env"]}


def mount_at(workload: Obj, path: str) -> tuple[Obj, Obj] | None:
    """The (volumeMount, volume) of the genoserve container at ``path``, if any."""
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in spec["containers"][0].get("volumeMounts", []):
        if mount["mountPath"] == path:
            return mount, volumes[mount["name"]]
    return None


def test_every_overlay_names_its_model_source() -> None:
    assert set(MODEL_SOURCES) == set(OVERLAYS)
    assert set(MODEL_SOURCES.values()) == {"image", "volume", "store"}
    assert MODEL_SOURCES["dev"] == "image", "the smoke test runs dev with the repository's models/ as the image's"


@pytest.mark.parametrize("overlay_name", overlays_reading("store"))
def test_store_overlays_read_the_secret_named_repository_and_follow_it(overlay_name: str) -> None:
    objects = render(overlay_name)
    assert not [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == STORE_SECRET], (
        "the model store's Secret is created out of band, never rendered"
    )
    expected = {
        "GENOSERVE_MODEL_REPOSITORY": ("repository", False),
        "GENOSERVE_RUNTIME__STORE__ENDPOINT": ("endpoint", True),
        "AWS_ACCESS_KEY_ID": ("access_key_id", True),
        "AWS_SECRET_ACCESS_KEY": ("secret_access_key", True),
    }
    served = list(genoserve_workloads(objects))
    assert {component(w) for w in served} == {"server", "worker"}
    for workload in served:
        name = workload["metadata"]["name"]
        env = env_items(workload)
        for variable, (key, optional) in expected.items():
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (STORE_SECRET, key), f"{name} {variable}: {ref}"
            # Optional: an AWS endpoint needs none, and the pod's role (IRSA) may give the credentials.
            assert ref.get("optional", False) is optional, f"{name} {variable}: optional must be {optional}"
        refs = {v: e["valueFrom"]["secretKeyRef"] for v, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        required = [v for v, ref in refs.items() if ref["name"] == STORE_SECRET and not ref.get("optional")]
        assert required == ["GENOSERVE_MODEL_REPOSITORY"], f"{name}: only the repository key may be required"
        assert env["GENOSERVE_RUNTIME__MODEL_CONTROL"]["value"] == "poll", name
        assert float(env["GENOSERVE_RUNTIME__POLL_INTERVAL_S"]["value"]) == 30, name
        assert env["GENOSERVE_RUNTIME__STORE__CACHE_DIR"]["value"] == CACHE_DIR, name
        found = mount_at(workload, CACHE_DIR)
        assert found is not None, f"{name}: nothing mounted at the cache {CACHE_DIR} (the root filesystem is read-only)"
        mount, volume = found
        assert not mount.get("readOnly"), name
        cache = volume.get("emptyDir")
        assert cache is not None, f"{name}: the cache is not an emptyDir: {volume}"
        assert cache.get("medium") != "Memory", f"{name}: models would count against the memory limit"
        assert re.fullmatch(r"\d+Gi", str(cache.get("sizeLimit", ""))), f"{name}: the cache needs a sizeLimit in Gi"
        assert mount_at(workload, IMAGE_MODELS) is None, name


@pytest.mark.parametrize("overlay_name", overlays_reading("volume"))
def test_volume_overlays_mount_the_models_claim_read_only_and_follow_it(overlay_name: str) -> None:
    objects = render(overlay_name)
    claim = find(objects, "PersistentVolumeClaim", "genoserve-models")
    assert "ReadWriteMany" in claim["spec"]["accessModes"] or "ReadOnlyMany" in claim["spec"]["accessModes"], (
        "every server and worker on any node mounts it"
    )
    served = list(genoserve_workloads(objects))
    assert {component(w) for w in served} == {"server", "worker"}
    for workload in served:
        name = workload["metadata"]["name"]
        env = env_items(workload)
        assert env["GENOSERVE_MODEL_REPOSITORY"] == {"name": "GENOSERVE_MODEL_REPOSITORY", "value": "/models"}, name
        assert env["GENOSERVE_RUNTIME__MODEL_CONTROL"]["value"] == "poll", name
        assert float(env["GENOSERVE_RUNTIME__POLL_INTERVAL_S"]["value"]) == 30, name
        found = mount_at(workload, "/models")
        assert found is not None, f"{name}: /models is not mounted"
        mount, volume = found
        assert mount.get("readOnly") is True, f"{name}: servers and workers must not write the models"
        assert volume.get("persistentVolumeClaim") == {"claimName": "genoserve-models", "readOnly": True}, name
        assert not any(STORE_SECRET in json.dumps(e) for e in env.values()), name


def test_images_name_their_model_folder_and_a_writable_model_cache() -> None:
    """The model-free images look in /models (nothing mounted: serve stops, naming it), the -models
    ones in their own copy; all of them keep object-storage downloads where the model-store
    component mounts its emptyDir (the folder the Dockerfile creates for uid 10001)."""
    for stage in MODEL_FREE_STAGES:
        assert dockerfile_stage(stage).env["GENOSERVE_MODEL_DIR"] == VOLUME_MODELS, stage
    for stage in MODELS_STAGES:
        assert dockerfile_stage(stage).env["GENOSERVE_MODEL_DIR"] == IMAGE_MODELS, stage
    for stage in (*MODEL_FREE_STAGES, *MODELS_STAGES):
        assert dockerfile_stage(stage).env["GENOSERVE_RUNTIME__STORE__CACHE_DIR"] == CACHE_DIR, stage


@pytest.mark.parametrize("overlay_name", overlays_reading("image"))
def test_image_overlays_serve_the_images_models_without_model_control(overlay_name: str) -> None:
    objects = render(overlay_name)
    assert "genoserve-models" not in {c["metadata"]["name"] for c in by_kind(objects, "PersistentVolumeClaim")}
    assert "model_dir" not in config_settings(objects)["runtime"], "the image names its models folder"
    assert "model_control" not in config_settings(objects)["runtime"]
    for workload in genoserve_workloads(objects):
        name = workload["metadata"]["name"]
        env = env_items(workload)
        for variable in ("GENOSERVE_MODEL_REPOSITORY", "GENOSERVE_RUNTIME__MODEL_REPOSITORY",
                         "GENOSERVE_RUNTIME__MODEL_CONTROL", "GENOSERVE_MODEL_DIR"):  # fmt: skip
            assert variable not in env, f"{name}: {variable} set, the image's models are not served"
        assert not [v for v in env if v.startswith(("AWS_", "GENOSERVE_RUNTIME__STORE__"))], name
        assert mount_at(workload, IMAGE_MODELS) is None, f"{name}: a volume hides the image's models"
        assert mount_at(workload, VOLUME_MODELS) is None, name
        [container] = pod_spec(workload)["containers"]
        assert image_stage_of(container) in MODELS_STAGES, f"{name}: {container['image']} holds no models"


class _Built(Exception):
    """Raised in place of building the settings: what the command would build them from."""

    def __init__(self, config: Path | None, overrides: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.overrides = overrides


def pod_settings(
    objects: list[Obj],
    workload: Obj,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets: Mapping[str, Mapping[str, str]] = EXAMPLE_SECRETS,
) -> Settings:
    """The Settings a server or worker container builds in its pod: the mounted genoserve.yaml,
    the image's ENV with the container's env over it (Secrets out of band from ``secrets``) and its
    flags, as ``genoserve`` maps them (the command runs up to where it builds its settings)."""
    [container] = pod_spec(workload)["containers"]
    [config_map] = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("genoserve-config")]
    config = folder / "genoserve.yaml"
    config.write_text(config_map["data"]["genoserve.yaml"])
    env = {k: v for k, v in dockerfile_stage(image_stage_of(container)).env.items() if k != "PATH"}
    env.update(container_env(objects, container, secrets))

    def capture(config_file: Path | None, overrides: dict[str, Any]) -> Settings:
        raise _Built(config_file, overrides)

    monkeypatch.setattr(cli_main, "build_settings", capture)
    assert flag(container["args"], "config") == "/etc/genoserve/genoserve.yaml"
    args = [f"--config={config}" if a.startswith("--config") else a for a in container["args"]]
    with pytest.raises(_Built) as built:
        cli.main(args, prog_name="genoserve", standalone_mode=False)
    assert built.value.config == config
    return load_settings(config, env, built.value.overrides)


def test_container_env_and_args_build_valid_settings(
    objects: list[Obj], overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every server and worker container's environment (image ENV, env, Secrets) and flags build
    valid genoserve Settings, with the model repository and control its overlay means."""
    source = MODEL_SOURCES[overlay]
    # The Secrets created out of band, with only their required keys: the optional ones may be absent.
    required_only = {
        "genoserve-redis": EXAMPLE_SECRETS["genoserve-redis"],
        STORE_SECRET: {"repository": EXAMPLE_SECRETS[STORE_SECRET]["repository"]},
    }
    for workload in genoserve_workloads(objects):
        name = workload["metadata"]["name"]
        settings = pod_settings(objects, workload, tmp_path, monkeypatch)
        runtime = settings.runtime
        assert runtime.families == ((family(workload),) if component(workload) == "server" else ()), name
        assert settings.jobs.broker_url.startswith(("redis://", "rediss://")), name
        if component(workload) == "server" and overlay in PROD_OVERLAYS:
            assert settings.server.tls.enabled, name
            assert settings.server.auth.enabled, name
        store = open_store(runtime)
        if source == "store":
            assert runtime.model_repository == EXAMPLE_SECRETS[STORE_SECRET]["repository"], name
            assert runtime.store.endpoint == EXAMPLE_SECRETS[STORE_SECRET]["endpoint"], name
            assert runtime.store.cache_dir == Path(CACHE_DIR), name
            assert isinstance(store, S3Store), name
            assert store.root.is_relative_to(CACHE_DIR), name
            bare = pod_settings(objects, workload, tmp_path, monkeypatch, required_only)
            assert bare.runtime.model_repository == runtime.model_repository, name
            assert (bare.runtime.store.endpoint, bare.runtime.store.allow_http) == ("", False), name
        elif source == "volume":
            assert runtime.model_repository == "/models", name
            assert isinstance(store, LocalStore), name
            assert store.path == Path("/models"), name
        else:
            assert runtime.model_repository == "", name
            assert isinstance(store, LocalStore), name
            assert store.path == Path(IMAGE_MODELS), name
        if source == "image":
            assert runtime.model_control == "none", name
        else:
            assert (runtime.model_control, runtime.poll_interval_s) == ("poll", 30.0), name


# -- monitoring ------------------------------------------------------------------------------------------


def exported_names() -> set[str]:
    """Every series name genoserve's metrics produce (``_total``, ``_bucket``, ``_sum``, ``_count``)."""
    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family_ in value.describe():
            for suffix in {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family_.type, [""]):
                names.add(family_.name + suffix)
    return names | set(gpu_metrics.METRIC_NAMES)


def test_alerts_and_dashboard_read_only_exported_metrics() -> None:
    exported = exported_names()
    used = {name for rule in alert_rules() for name in metric_names_in(rule["expr"])}
    used |= {name for _, expr in dashboard_targets() for name in metric_names_in(expr)}
    assert used, "no genoserve metric used"
    assert used <= exported, f"not exported by genoserve: {sorted(used - exported)}"
    for needed in ("genoserve_job_queue_oldest_age_seconds", "genoserve_worker_consumers", "genoserve_model_ready",
                   "genoserve_gpu_memory_used_bytes"):  # fmt: skip
        assert needed in used


def test_alert_rules_pass_promtool() -> None:
    result = run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yaml").read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a unit test"


def test_every_alert_has_a_runbook_entry() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["runbook_url"] == f"deploy/README.md#{rule['alert'].lower()}"
        assert f"### {rule['alert']}" in readme, f"deploy/README.md does not explain {rule['alert']}"


def test_dashboard_panels() -> None:
    titles = [title for title, _ in dashboard_targets()]
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for needed in ("genoserve_requests_total", "genoserve_request_duration_seconds_bucket", "genoserve_batch_size",
                   "genoserve_queue_duration_seconds_bucket", "genoserve_job_queue_depth",
                   "genoserve_items_processed_total", "DCGM_FI_DEV_GPU_UTIL",
                   "genoserve_model_store_last_success_timestamp_seconds",
                   "genoserve_model_store_sync_failures_total"):  # fmt: skip
        assert needed in exprs, needed
    assert len(titles) >= 15
    rules = yaml.safe_load((DEPLOY / "k8s" / "base" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rules["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]

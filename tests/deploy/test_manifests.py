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
from collections.abc import Iterator
from typing import Any

import click
import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from genoserve.cli.main import cli
from genoserve.core import metrics
from genoserve.jobs.celery_app import FAMILY_QUEUES
from genoserve.runtime import gpu_metrics
from tests.deploy.manifests import (
    CRD_KINDS,
    DEPLOY,
    FAMILY_SERVICES,
    GPU_FAMILIES,
    OVERLAYS,
    REPO,
    SCHEMAS,
    Obj,
    alert_rules,
    by_kind,
    component,
    config_settings,
    containers,
    dashboard_targets,
    dockerfile_stage,
    family,
    find,
    flag,
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
    finals = {s.split()[2]: s for s in stages if s.split()[2] in ("cpu", "gpu")}
    assert set(finals) == {"cpu", "gpu"}
    for name, stage in finals.items():
        assert "USER 10001:10001" in stage, name
        for banned in ("torch", "gcc", "build-essential", "pip install"):
            assert banned not in stage, f"final stage {name} installs {banned}"
        assert "/opt/genoserve/models" in stage, f"final stage {name} does not copy the models"
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
    for workload in genoserve_workloads(objects):
        for container in containers(workload):
            tag = container["image"].rsplit(":", 1)[1]
            gpu = overlay != "dev" and family(workload) in GPU_FAMILIES
            assert tag == f"{VERSION}-{'gpu' if gpu else 'cpu'}", f"{workload['metadata']['name']}: {tag}"


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


def test_redis_in_dev_and_gpu_external_in_prod(objects: list[Obj], overlay: str) -> None:
    statefulsets = by_kind(objects, "StatefulSet")
    if overlay == "prod":
        assert not statefulsets
        assert not [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "genoserve-redis"], (
            "prod's Redis Secret is created out of band, never rendered"
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
    if overlay != "prod":
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
        assert (tls <= env) == (overlay == "prod"), server["metadata"]["name"]


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
    assert "SUCCESS: 9 rules found" in result.stdout + result.stderr


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
                   "genoserve_items_processed_total", "DCGM_FI_DEV_GPU_UTIL"):  # fmt: skip
        assert needed in exprs, needed
    assert len(titles) >= 15
    rules = yaml.safe_load((DEPLOY / "k8s" / "base" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rules["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]

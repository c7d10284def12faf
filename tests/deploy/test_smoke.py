"""Manifest smoke test: the dev overlay's containers run as local processes, scraped by a real
Prometheus configured from the overlay's ServiceMonitors and loaded with the repo's alert rules.

Redis, every server whose family has a model in models/ (at least the platform one), and the
platform worker start from their rendered command, args and env (see tests/deploy/local.py for
the only things changed to run on loopback). The servers must pass their own startup, readiness
and liveness probes; the worker must finish a job; Prometheus must see every target up, the
metrics the alerts and the dashboard read, with the labels they group by; every rule must
evaluate cleanly and a healthy deployment must raise no alert.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genoserve.client import Client
from genoserve.core.errors import InvalidArgument
from genoserve.runtime import gpu_metrics
from genoserve.v1 import jobs_pb2
from tests.deploy.local import LocalCluster, LocalPod, wait_for
from tests.deploy.manifests import (
    DEPLOY,
    FAMILY_SERVICES,
    REPO,
    Obj,
    alert_rules,
    by_kind,
    dashboard,
    metric_names_in,
    render,
    tool,
)
from tests.support.jobs import wait_for_job
from tests.support.server import free_port

pytestmark = pytest.mark.integration

#: The ServiceMonitors scrape every 15 s; here every second so that the test takes seconds.
SCRAPE_INTERVAL = "1s"
ROWS = 300


def families_with_models() -> list[str]:
    found = set()
    for spec in (REPO / "models").glob("*/model.yaml"):
        found.add(yaml.safe_load(spec.read_text())["family"])
    return sorted(found)


def health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def probe_passes(pod: LocalPod, probe: str) -> bool:
    """Run the container's own probe the way the kubelet does."""
    spec = pod.container[probe]
    if "grpc" in spec:
        port = pod.ports[spec["grpc"]["port"]]
        return health(port, spec["grpc"].get("service", "")) == health_pb2.HealthCheckResponse.SERVING
    if "httpGet" in spec:
        http_get(f"http://127.0.0.1:{pod.port(spec['httpGet']['port'])}{spec['httpGet']['path']}")
        return True
    raise AssertionError(f"{pod.name}: unsupported probe {spec}")


# -- Prometheus --------------------------------------------------------------------------------------


def scrape_config(objects: list[Obj], pods: list[LocalPod], rules: Path) -> dict[str, Any]:
    """What the Prometheus Operator generates from the overlay's ServiceMonitors, with static
    loopback targets in place of Kubernetes service discovery."""
    jobs = []
    for monitor in by_kind(objects, "ServiceMonitor"):
        spec = monitor["spec"]
        namespace = monitor["metadata"]["namespace"]
        selected = [
            s
            for s in by_kind(objects, "Service")
            if all(s["metadata"].get("labels", {}).get(k) == v for k, v in spec["selector"]["matchLabels"].items())
        ]
        for index, endpoint in enumerate(spec["endpoints"]):
            targets = []
            for service in selected:
                labels = service["metadata"]["labels"]
                [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
                for pod in pods:
                    if all(pod.labels.get(k) == v for k, v in service["spec"]["selector"].items()):
                        target_labels = {
                            "job": labels.get(spec.get("jobLabel", ""), service["metadata"]["name"]),
                            "namespace": monitor["metadata"]["namespace"],
                            "service": service["metadata"]["name"],
                            "pod": pod.name,
                            "endpoint": endpoint["port"],
                        }
                        for relabel in endpoint.get("relabelings", []):
                            [source] = relabel["sourceLabels"]
                            prefix = "__meta_kubernetes_service_label_"
                            assert source.startswith(prefix), f"relabeling not emulated: {relabel}"
                            assert relabel.get("action", "replace") == "replace", relabel
                            value = {
                                k.replace(".", "_").replace("/", "_").replace("-", "_"): v for k, v in labels.items()
                            }
                            target_labels[relabel["targetLabel"]] = value[source[len(prefix) :]]
                        targets.append(
                            {"targets": [f"127.0.0.1:{pod.port(port['targetPort'])}"], "labels": target_labels}
                        )
            assert targets, f"ServiceMonitor {monitor['metadata']['name']} selects no running pod"
            jobs.append(
                {
                    "job_name": f"serviceMonitor/{namespace}/{monitor['metadata']['name']}/{index}",
                    "honor_labels": endpoint.get("honorLabels", False),
                    "metrics_path": endpoint.get("path", "/metrics"),
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "static_configs": targets,
                }
            )
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules)],
        "scrape_configs": jobs,
    }


class Prometheus:
    def __init__(self, config: dict[str, Any], root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run(
            [tool("promtool"), "check", "config", str(self.config_file)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config_file}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = json.loads(http_get(f"{self.url}/api/v1/{path}{query}"))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the rig ---------------------------------------------------------------------------------------------


@dataclass
class Rig:
    objects: list[Obj]
    cluster: LocalCluster
    servers: dict[str, LocalPod]
    worker: LocalPod
    prometheus: Prometheus
    job: jobs_pb2.Job
    infers: int


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("dev-overlay")
    objects = render("dev")
    cluster = LocalCluster(objects, root)
    pods: list[LocalPod] = []
    prometheus: Prometheus | None = None
    try:
        redis = cluster.pod("StatefulSet", "genoserve-redis")
        pods.append(redis.start())
        wait_for(lambda: probe_ok_exec(redis), "redis readiness", 20, pods)
        families = families_with_models()
        assert "platform" in families
        servers = {f: cluster.pod("Deployment", f"genoserve-server-{f}") for f in families}
        worker = cluster.pod("Deployment", "genoserve-worker-platform")
        for pod in [*servers.values(), worker]:
            pods.append(pod.start())
        for pod in servers.values():
            wait_for(lambda pod=pod: probe_passes(pod, "startupProbe"), f"{pod.name} startup probe", 120, pods)
        wait_for(lambda: probe_passes(worker, "startupProbe"), "worker startup probe", 60, pods)

        platform = servers["platform"]
        address = f"127.0.0.1:{platform.port('grpc')}"
        data = cluster.shared_mounts["/data"]
        rows = np.random.default_rng(0).normal(size=(ROWS, 128)).astype(np.float32)
        np.save(data / "rows.npy", rows)
        infers = 0
        with Client(address, timeout=30) as client:
            assert {m.name for m in client.list_models()} >= {"platform-mlp"}
            for size in (1, 4, 16, 64):
                assert client.infer("platform-mlp", {"x": rows[:size]})["y"].shape == (size, 16)
                infers += 1
            with pytest.raises(InvalidArgument):
                client.infer("platform-mlp", {"x": rows[:2, :5]})
            submitted = client.submit_job("platform.score_rows", [str(data / "rows.npy")], str(data / "out"))
            job = wait_for_job(client, submitted.id, timeout=120)
        rules = DEPLOY / "prometheus" / "alerts.yaml"
        prometheus = Prometheus(scrape_config(objects, [*servers.values(), worker], rules), root / "prometheus")
        wait_for(lambda: "Ready" in http_get(f"{prometheus.url}/-/ready"), "Prometheus ready", 30, pods)
        yield Rig(objects, cluster, servers, worker, prometheus, job, infers)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for pod in reversed(pods):
            pod.stop()


def probe_ok_exec(pod: LocalPod) -> bool:
    """An exec probe (redis-cli ping), pointed at the local port."""
    command = list(pod.container["readinessProbe"]["exec"]["command"])
    [port] = pod.ports.values()
    result = subprocess.run([tool(command[0]), "-p", str(port), *command[1:]], capture_output=True, text=True)
    return result.returncode == 0 and "PONG" in result.stdout


# -- tests ---------------------------------------------------------------------------------------------


def test_servers_pass_their_own_probes(rig: Rig) -> None:
    for name, pod in rig.servers.items():
        assert pod.container["readinessProbe"]["grpc"].get("service", "") == FAMILY_SERVICES[name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe_passes(pod, probe), f"{pod.name} {probe}"


def test_the_worker_finished_a_job_submitted_through_the_server(rig: Rig) -> None:
    assert rig.job.state == jobs_pb2.JOB_STATE_SUCCEEDED, rig.job
    scores = np.load(Path(rig.job.outputs[0]))
    assert scores.shape == (ROWS, 16)
    assert probe_passes(rig.worker, "livenessProbe")


def test_prometheus_scrapes_every_target(rig: Rig) -> None:
    def all_up() -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = rig.prometheus.api("targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else []

    targets = wait_for(all_up, "every target up", 30)
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {"genoserve-server", "genoserve-worker"}
    assert len(targets) == len(rig.servers) + 1
    assert rig.prometheus.value('sum(up{job=~"genoserve-server|genoserve-worker"})') == len(targets)


def test_metrics_the_alerts_and_dashboard_read_are_there_with_their_labels(rig: Rig) -> None:
    p = rig.prometheus
    models, infer = {"service": "genoserve.v1.Models", "method": "Infer"}, rig.infers
    kind = {"kind": "platform.score_rows"}
    server, worker = {"job": "genoserve-server"}, {"job": "genoserve-worker"}
    expected = [
        # online: the gRPC service (honorLabels keeps it over the Kubernetes Service), method, code;
        # family comes from the Service's label through the ServiceMonitor's relabeling
        ("genoserve_requests_total", {**server, "family": "platform", **models, "code": "OK"}, infer),
        ("genoserve_requests_total", {**models, "code": "INVALID_ARGUMENT"}, 1),
        ("genoserve_request_duration_seconds_bucket", {**models, "le": "+Inf"}, infer + 1),
        ("genoserve_batch_size_count", {"model": "platform-mlp"}, infer),
        ("genoserve_queue_duration_seconds_count", {"model": "platform-mlp"}, infer),
        ("genoserve_inference_duration_seconds_count", {"model": "platform-mlp"}, 1),
        # jobs: the server counts submissions; the worker its shards, items and the final state
        ("genoserve_jobs_submitted_total", {**server, **kind}, 1),
        ("genoserve_jobs_finished_total", {**worker, **kind, "status": "succeeded"}, 1),
        ("genoserve_shard_duration_seconds_count", {**worker, **kind, "outcome": "done"}, rig.job.shards_total),
        ("genoserve_items_processed_total", {**worker, "family": "platform", **kind}, ROWS),
    ]

    def selector(metric: str, labels: dict[str, str]) -> str:
        return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"

    def scraped() -> bool:
        return all(p.query(f"sum({selector(m, labels)}) >= {minimum}") for m, labels, minimum in expected)

    wait_for(scraped, "the metrics of the calls and the job", 30)
    assert (
        p.value('genoserve_model_ready{job="genoserve-server",family="platform",model="platform-mlp",version="1"}') == 1
    )
    assert p.value('genoserve_worker_consumers{job="genoserve-worker",queue="platform"}') == 1
    assert p.value('max(genoserve_job_queue_depth{job="genoserve-server",queue="platform"})') == 0
    assert p.value('max(genoserve_job_queue_oldest_age_seconds{job="genoserve-server",queue="platform"})') == 0
    items = p.value('sum(genoserve_items_processed_total{kind="platform.score_rows"})')
    assert items == ROWS  # every row once: no shard ran twice


def test_every_genoserve_metric_the_rules_and_dashboard_use_exists(rig: Rig) -> None:
    used = {n for rule in alert_rules() for n in metric_names_in(rule["expr"])}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            used |= metric_names_in(target["expr"])
    present = {r["metric"]["__name__"] for r in rig.prometheus.query('{__name__=~"genoserve_.+"}')}
    # Counters that only move on trouble (refusals) have no series until the first one; GPU gauges
    # exist only where NVML answers (GPU pods; tests/unit/runtime/test_gpu_metrics.py).
    missing = used - present - {"genoserve_batcher_rejected_total", *gpu_metrics.METRIC_NAMES}
    assert not missing, f"used by the rules or dashboard but never scraped: {sorted(missing)}"


def test_rules_evaluate_cleanly_and_a_healthy_deployment_raises_no_alert(rig: Rig) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in rig.prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else []

    rules = wait_for(evaluated, "every rule evaluated", 30)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    for rule in rules:
        assert rule["health"] == "ok", rule
    time.sleep(2)
    firing = [a for a in rig.prometheus.api("alerts")["alerts"] if a["labels"]["alertname"].startswith("Genoserve")]
    assert firing == [], firing


def test_every_dashboard_query_runs_and_shows_data(rig: Rig) -> None:
    for panel in dashboard()["panels"]:
        if panel["type"] == "row" or "_gpu_" in json.dumps(panel["targets"]) or "DCGM" in json.dumps(panel):
            continue  # GPU panels: the DCGM exporter and NVML exist on GPU nodes only
        results = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace('"$namespace"', '".*"')
            results.append(rig.prometheus.query(expr))
        assert any(results), f"panel {panel['title']!r} shows nothing"


def test_every_metrics_endpoint_passes_promtool(rig: Rig) -> None:
    for pod in [*rig.servers.values(), rig.worker]:
        text = http_get(f"http://127.0.0.1:{pod.port('metrics')}/metrics")
        result = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert result.returncode == 0, f"{pod.name}: {result.stdout}{result.stderr}"


def test_nothing_is_written_to_the_read_only_root_filesystem(rig: Rig) -> None:
    """Pods run with readOnlyRootFilesystem: everything written must go to a mounted volume."""
    for pod in [*rig.servers.values(), rig.worker]:
        written = [str(p.relative_to(pod.workdir)) for p in pod.workdir.rglob("*")]
        assert written == [], f"{pod.name} wrote {written} under its working directory (read-only in the pod)"


def test_servers_drain_and_exit_cleanly_on_sigterm(rig: Rig) -> None:
    for pod in rig.servers.values():
        assert pod.stop(timeout=45) == 0, pod.log()

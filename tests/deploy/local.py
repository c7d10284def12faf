"""Run a rendered pod's container as a local process, as the kubelet would run it in the image.

What is taken from the manifests (never re-typed here): command, args, env (values, Secret and
ConfigMap references), container ports, volume mounts, probes. What is taken from the image
(deploy/docker/Dockerfile): ENTRYPOINT, ENV and WORKDIR. What is changed, and only this, to run
on one machine: every container port gets a free loopback port (the args naming it are
rewritten), ``0.0.0.0`` becomes ``127.0.0.1`` (and Redis gets ``--bind 127.0.0.1``), Service host
names become ``127.0.0.1``, and every mounted path (or image path) becomes a local folder: a
PersistentVolumeClaim or ConfigMap is one folder shared by every pod that mounts it, an emptyDir
one folder per pod, the models folder of a -models image the repository's models/, the image's
WORKDIR (also HOME) an empty folder that must stay empty (the root filesystem is read-only in the
pods). The image is the Dockerfile target the container's image tag names (``0.1.0-cpu-models``:
cpu-models).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import (
    MODELS_STAGES,
    REPO,
    Obj,
    by_kind,
    dockerfile_stage,
    find,
    image_stage_of,
    pod_spec,
    secret_value,
)
from tests.support.server import free_port

#: Files the -models images hold (COPY in the Dockerfile) and where they are in this checkout; the
#: model-free images (cpu, gpu) hold none.
MODELS_IN_IMAGE = {"/opt/genoserve/models": REPO / "models"}


def image_paths(stage: str) -> dict[str, Path]:
    """What the image of Dockerfile target ``stage`` holds that a pod reads, as local folders."""
    return dict(MODELS_IN_IMAGE) if stage in MODELS_STAGES else {}


@dataclass
class LocalPod:
    """One container of a rendered workload, localised."""

    name: str
    labels: dict[str, str]
    container: Obj
    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]  # containerPort -> local port
    mounts: dict[str, Path]  # mountPath -> local folder
    log_path: Path
    #: The image's WORKDIR (and HOME): on the pod's read-only root filesystem, so it must stay empty.
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def port(self, name: str) -> int:
        [port] = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return self.ports[port]

    def start(self) -> LocalPod:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the main process (as the kubelet sends it), SIGKILL to what is left after."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return int(self.proc.wait())


class LocalCluster:
    """The rendered objects of one overlay, their volumes as folders under ``root``."""

    def __init__(self, objects: list[Obj], root: Path) -> None:
        self.objects = objects
        self.root = root
        #: Service name -> local address of its one local pod's port, filled as pods are made.
        self.service_ports: dict[tuple[str, int], int] = {}

    # -- volumes ------------------------------------------------------------------------------------

    def _volume_dir(self, pod: str, volume: Obj, mount: Obj, claim_templates: Mapping[str, Obj]) -> Path:
        name = volume["name"] if volume else mount["name"]
        if volume and "persistentVolumeClaim" in volume:
            path = self.root / "volumes" / f"pvc-{volume['persistentVolumeClaim']['claimName']}"
        elif volume and "configMap" in volume:
            path = self.root / "volumes" / f"configmap-{volume['configMap']['name']}"
            self._write_config_map(volume["configMap"]["name"], path)
        elif volume and "secret" in volume:
            raise AssertionError(f"{pod}: Secret volumes are not used by the dev overlay")
        elif volume and "emptyDir" in volume:
            path = self.root / "volumes" / f"{pod}-{name}"
        elif name in claim_templates:
            path = self.root / "volumes" / f"{name}-{pod}-0"
        else:
            raise AssertionError(f"{pod}: volume {name} of an unsupported kind: {volume}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_config_map(self, name: str, folder: Path) -> None:
        config = find(self.objects, "ConfigMap", name)
        folder.mkdir(parents=True, exist_ok=True)
        for key, text in config.get("data", {}).items():
            content = text
            if key.endswith((".yaml", ".yml")):
                content = yaml.safe_dump(self._localise_tree(yaml.safe_load(text)), sort_keys=False)
            (folder / key).write_text(content)

    def _localise_tree(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self._localise_tree(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._localise_tree(v) for v in node]
        if isinstance(node, str):
            return self.localise_text(node, self.shared_mounts)
        return node

    @property
    def shared_mounts(self) -> dict[str, Path]:
        """Paths every genoserve pod mounts the same way (the job data volume)."""
        return {"/data": self.root / "volumes" / "pvc-genoserve-data"}

    # -- text ---------------------------------------------------------------------------------------

    def localise_text(self, text: str, mounts: Mapping[str, Path], ports: Mapping[int, int] | None = None) -> str:
        if mounts:  # one pass: a replaced path is never rewritten again
            prefixes = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
            text = re.sub(rf"(?<![\w/.])({prefixes})(?=/|$)", lambda m: str(mounts[m.group(1)]), text)
        for (service, port), local in self.service_ports.items():
            text = text.replace(f"{service}:{port}", f"127.0.0.1:{local}")
        text = text.replace("0.0.0.0", "127.0.0.1")
        for container_port, local in (ports or {}).items():
            text = re.sub(rf"(?<=[=:]){container_port}$", str(local), text)
        return text

    # -- pods ---------------------------------------------------------------------------------------

    def pod(self, kind: str, name: str) -> LocalPod:
        workload = find(self.objects, kind, name)
        spec = pod_spec(workload)
        [container] = spec["containers"]
        genoserve = self._is_genoserve(container)
        image_stage = image_stage_of(container) if genoserve else None
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", [])}
        mounts = {
            m["mountPath"]: self._volume_dir(name, volumes.get(m["name"], {}), m, claims)
            for m in container.get("volumeMounts", [])
        }
        mounts = {**(image_paths(image_stage) if image_stage else {}), **mounts}
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        argv = self._command(container, image_stage)
        previous = ""
        for arg in container.get("args", []):
            if previous.startswith("--") and arg.isdigit() and int(arg) in ports:
                arg = str(ports[int(arg)])
            argv.append(self.localise_text(arg, mounts, ports))
            previous = arg
        if argv[0].endswith("redis-server"):
            argv += ["--bind", "127.0.0.1"]  # its image listens on every interface; here loopback only
        env = self._environment(container, mounts, image_stage)
        image_workdir = dockerfile_stage(image_stage).workdir if image_stage else "/"
        workdir = self.root / "rootfs" / name / image_workdir.lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(workdir)
        self.root.joinpath("logs").mkdir(exist_ok=True)
        local = LocalPod(
            name=name,
            labels=dict(workload["spec"]["template"]["metadata"]["labels"]),
            container=container,
            argv=argv,
            env=env,
            ports=ports,
            mounts=mounts,
            log_path=self.root / "logs" / f"{name}.log",
            workdir=workdir,
        )
        for service in by_kind(self.objects, "Service"):
            selector = service["spec"].get("selector", {})
            if selector and all(local.labels.get(k) == v for k, v in selector.items()):
                for port in service["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    container_port = local.port(target) if isinstance(target, str) else ports[target]
                    self.service_ports[(service["metadata"]["name"], port["port"])] = container_port
        return local

    @staticmethod
    def _is_genoserve(container: Obj) -> bool:
        return bool(container.get("command") == ["genoserve"])

    def _command(self, container: Obj, image_stage: str | None) -> list[str]:
        command = list(container["command"])
        if image_stage is not None:
            entrypoint = dockerfile_stage(image_stage).entrypoint
            assert command == entrypoint, f"command {command} is not the image's ENTRYPOINT {entrypoint}"
            return [sys.executable, "-m", "genoserve.cli.main"]
        binary = shutil.which(command[0])
        if binary is None:
            raise RuntimeError(f"{command[0]} is not installed: run `make setup`")
        return [binary, *command[1:]]

    def _environment(self, container: Obj, mounts: Mapping[str, Path], image_stage: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENOSERVE_")}
        if image_stage is not None:
            for name, value in dockerfile_stage(image_stage).env.items():
                if name != "PATH":
                    env[name] = self.localise_text(value, mounts)
        tmp = mounts.get("/tmp")
        if tmp is not None:
            env["TMPDIR"] = str(tmp)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.localise_text(str(item["value"]), mounts)
                continue
            ref = item["valueFrom"].get("secretKeyRef")
            if ref is None:
                raise AssertionError(f"env {item['name']}: only values and secretKeyRef are emulated")
            env[item["name"]] = self.localise_text(secret_value(self.objects, ref["name"], ref["key"]), mounts)
        return env


def wait_for(check: Any, what: str, timeout: float, pods: Sequence[LocalPod] = ()) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail early if a pod died."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        for pod in pods:
            if not pod.alive():
                raise AssertionError(f"{pod.name} exited while waiting for {what}:\n{pod.log()}")
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in pods)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last})\n{logs}")

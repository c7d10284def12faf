"""Generate the Kubernetes copies of the monitoring sources (``make deploy-sync``).

- deploy/prometheus/alerts.yaml -> deploy/k8s/base/monitoring/prometheusrule.yaml (PrometheusRule)
- deploy/grafana/genoserve-dashboard.json -> deploy/k8s/base/monitoring/genoserve-dashboard.json
  (Kustomize only reads files under its own folder; the ConfigMap is generated from the copy)

``python deploy/sync.py --check`` exits 1 when a copy is stale (``make deploy-check`` runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "genoserve-dashboard.json"
MONITORING = DEPLOY / "k8s" / "base" / "monitoring"

HEADER = "# Generated from deploy/prometheus/alerts.yaml by `make deploy-sync`: edit that file, not this one.\n"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL expressions) as ``|`` blocks, as in the source file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


def prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "genoserve", "labels": {"app.kubernetes.io/name": "genoserve"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_BlockDumper, sort_keys=False, width=200)


def outputs() -> dict[Path, str]:
    return {
        MONITORING / "prometheusrule.yaml": prometheus_rule(),
        MONITORING / "genoserve-dashboard.json": DASHBOARD.read_text(),
    }


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(DEPLOY.parent)}")
    for path in stale:
        print(f"{path.relative_to(DEPLOY.parent)} is stale: run `make deploy-sync`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

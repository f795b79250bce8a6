"""The kustomize overlays as they will be applied: rendered, then checked against the schemas.

Rendering needs `kubectl` (its built-in kustomize) and no cluster; without it the test is
skipped. The other deploy tests check the source files one by one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
K8S_VERSION = "1.31.0"
SERVICES = {"gateway", "ingest", "index", "authorize", "render", "audit"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_each_overlay_renders_to_valid_manifests(overlay: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert deployments.keys() == SERVICES
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        # Its own NATS user, and a metrics port Prometheus may scrape.
        assert env["KRYPTON_NATS_URL"]["valueFrom"]["secretKeyRef"]["key"] == f"{name}-url"
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "9100"

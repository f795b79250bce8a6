"""Offline checks of the deployment files: Dockerfile, compose.yaml, kustomize trees, Helm values.

Nothing is built or run: YAML must parse, compose.yaml must satisfy the vendored Compose
Specification schema, every Kubernetes manifest must satisfy the Kubernetes schemas shipped by
`kubernetes-validate`, and kustomizations must reference files that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.31.0"
SERVICES = ("gateway", "ingest", "index", "authorize", "render", "audit")
LAG_SCALED = {"ingest": "ingest", "index": "index", "render": "render", "audit": "audit"}
ALL_YAML = sorted([ROOT / "compose.yaml", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")], key=str)
K8S_MANIFESTS = sorted(
    p for p in K8S.rglob("*.yaml") if p.name not in ("kustomization.yaml", "nats-values.yaml")
)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _docs(path)


def test_compose_file_satisfies_the_compose_specification_schema() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(_compose())


def test_compose_runs_every_service_with_a_health_check_and_a_restart_policy() -> None:
    services = _compose()["services"]
    for name in (*SERVICES, "nats-1", "nats-2", "nats-3", "postgres", "minio"):
        assert "test" in services[name]["healthcheck"], name
        assert services[name]["restart"] == "unless-stopped", name
    for name in SERVICES:
        assert services[name]["build"]["args"]["SERVICE"] == name
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert services["postgres"]["image"].startswith("postgres:17")
    wanted = {"otel-collector", "tempo", "prometheus", "grafana", "minio-init"}
    assert wanted <= services.keys()


def test_compose_commits_no_secret_values() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|PEPPER|ACCESS_KEY)\w*:\s", line):
            assert ":?" in line, line


def test_compose_mounts_configuration_files_that_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_prometheus_and_grafana_configs_name_compose_services() -> None:
    services = _compose()["services"].keys()
    prometheus = _docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    for job in prometheus["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, target
    sources = _docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml")[0]
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "tempo"}


def test_dockerfile_is_multi_stage_non_root_with_a_health_check_and_no_secret() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert instructions.count("FROM") >= 3
    assert "ARG SERVICE" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users, "the image must drop root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in instructions
    assert "uv sync --frozen --no-dev" in text
    assert "krypton run" in text
    assert not re.search(r"(?i)(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|PEPPER)", text)
    assert (ROOT / "deploy" / "docker" / "healthcheck.py").is_file()


@pytest.mark.parametrize(
    "kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=lambda p: p.parent.name
)
def test_kustomizations_reference_files_that_exist(kustomization: Path) -> None:
    data = _docs(kustomization)[0]
    entries = list(data.get("resources", []))
    entries += [p["path"] for p in data.get("patches", []) if "path" in p]
    assert entries
    for entry in entries:
        target = kustomization.parent / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), entry


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_manifests_satisfy_the_kubernetes_schemas(path: Path) -> None:
    # Overlay patches are partial objects: only the base and complete overlay objects are
    # checked strictly; KEDA custom resources are checked by shape below.
    is_patch = path.name in ("replicas.yaml", "resources.yaml", "nats-credentials.yaml")
    for doc in _docs(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        if is_patch:
            assert doc["kind"] == "Deployment"
            assert doc["metadata"]["name"] in SERVICES
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_service_has_a_deployment_a_pdb_and_a_probe() -> None:
    base = K8S / "base"
    pdbs = {d["metadata"]["name"] for d in _docs(base / "pdb.yaml")}
    assert pdbs == set(SERVICES)
    for name in SERVICES:
        (deployment,) = _docs(base / f"{name}.yaml")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "livenessProbe" in container
        assert container["resources"]["requests"]
        secrets = [e for e in container["env"] if "valueFrom" in e]
        assert all("secretKeyRef" in e["valueFrom"] for e in secrets)
        assert all("value" not in e for e in secrets)
    (gateway,) = _docs(base / "gateway.yaml")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_production_scales_consumers_on_jetstream_lag_and_the_gateway_on_cpu() -> None:
    production = K8S / "overlays" / "production"
    scaled = {d["metadata"]["name"]: d for d in _docs(production / "scaledobjects.yaml")}
    assert scaled.keys() == LAG_SCALED.keys()
    for name, durable in LAG_SCALED.items():
        spec = scaled[name]["spec"]
        assert scaled[name]["kind"] == "ScaledObject"
        assert spec["scaleTargetRef"]["name"] == name
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["consumer"] == durable
        assert trigger["metadata"]["stream"].startswith("KRYPTON_")
        assert int(trigger["metadata"]["lagThreshold"]) > 0
    (hpa,) = _docs(production / "gateway-hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_nats_helm_values_run_three_servers_with_jetstream_file_storage() -> None:
    values = _docs(K8S / "nats-values.yaml")[0]
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True

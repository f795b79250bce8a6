"""Per-service NATS permissions: the deployment files carry exactly `krypton.bus.permissions`.

What each service really uses is checked by running the platform under these permissions
(tests/e2e/test_nats_permissions.py: no violation); here, that every deployment file holds the
same table, that nats-server accepts it, and that no service holds another one's rights.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from krypton.bus import streams
from krypton.bus.permissions import (
    PERMISSIONS,
    authorization_users,
    inbox_prefix,
    nats_authorization,
    password_variable,
)
from krypton.contracts import subjects
from krypton.testing.servers import venv_binary

ROOT = Path(__file__).resolve().parents[2]
NATS = ROOT / "deploy" / "nats"
SERVICES = {"gateway", "ingest", "index", "authorize", "render", "audit"}


def _holders(action: str, subject: str) -> set[str]:
    return {s for s, p in PERMISSIONS.items() if subject in getattr(p, action)}


def test_every_service_has_a_user() -> None:
    assert set(PERMISSIONS) == SERVICES


def test_each_subject_is_owned_by_the_service_the_architecture_names() -> None:
    pub = lambda subject: _holders("publish", subject)  # noqa: E731
    sub = lambda subject: _holders("subscribe", subject)  # noqa: E731
    assert pub(f"{subjects.INGEST_RECEIVED}.>") == {"gateway"}
    assert pub(f"{subjects.INSTANCE_STORED}.>") == {"ingest"}
    assert pub(f"{subjects.INSTANCE_REJECTED}.>") == {"ingest"}
    assert pub(f"{subjects.POLICY_CHANGED}.>") == {"authorize"}
    assert pub(subjects.AUDIT_CHECKPOINT) == {"audit"}
    # Audit events come from the services that answer reads and policy commands.
    assert pub(f"{subjects.AUDIT_EVENT}.>") == {"gateway", "authorize"}
    assert sub(f"{subjects.SVC_AUTHZ}.>") == {"authorize"}
    assert sub(subjects.SVC_INDEX_QIDO) == sub(subjects.SVC_INDEX_LOCATE) == {"index"}
    assert sub(subjects.SVC_RENDER_FRAME) == sub(subjects.SVC_TRANSCODE_INSTANCE) == {"render"}
    assert sub(subjects.SVC_AUDIT_QUERY) == {"audit"}
    # Only the gateway sends requests to the services; policy changes reach authorize and the
    # gateway (which empties its locate cache on each), nobody else.
    for request in (subjects.SVC_INDEX_QIDO, subjects.SVC_RENDER_FRAME, subjects.SVC_AUDIT_QUERY):
        assert pub(request) == {"gateway"}
    assert sub(f"{subjects.POLICY_CHANGED}.>") == {"authorize", "gateway"}


def test_no_service_reads_another_ones_inbox_or_binds_another_ones_consumer() -> None:
    for service, perms in PERMISSIONS.items():
        inboxes = [s for s in perms.subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"{inbox_prefix(service)}.>"], service
        assert "_INBOX.>" not in perms.publish
        assert not any(s == ">" or s.startswith("$JS.API.>") for s in perms.publish), service
        for subject in perms.publish:
            if subject.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")):
                durable = subject.removeprefix("$JS.API.CONSUMER.").split(".")
                assert service in subject, subject
                assert any(t == service or t.startswith(f"{service}-") for t in durable), subject
    # Only ingest answers the gateway's upload inbox (the verdict of a STOW).
    assert _holders("publish", f"{inbox_prefix('gateway')}.>") == {"ingest"}
    names = {spec.name for spec in streams.ALL_STREAMS}
    assert all(
        s.split(".")[4] in names
        for p in PERMISSIONS.values()
        for s in p.publish
        if s.startswith("$JS.API.STREAM.")
    )


def test_the_compose_nats_servers_load_exactly_the_generated_permissions() -> None:
    generated = nats_authorization({s: "$" + password_variable(s) for s in PERMISSIONS})
    assert (NATS / "permissions.conf").read_text().endswith(generated)
    assert "include ./permissions.conf" in (NATS / "nats.conf").read_text()
    env = {**os.environ, "NATS_SERVER_NAME": "check"}
    env.update({password_variable(s): f"pw-{s}" for s in PERMISSIONS})
    result = subprocess.run(
        [venv_binary("nats-server"), "-t", "-c", str(NATS / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_gives_each_service_its_own_user() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for service in SERVICES:
        url = compose["services"][service]["environment"]["KRYPTON_NATS_URL"]
        assert url.startswith(f"nats://{service}:${{{password_variable(service)}:?"), url
    for node in ("nats-1", "nats-2", "nats-3"):
        environment = compose["services"][node]["environment"]
        assert {password_variable(s) for s in SERVICES} <= environment.keys()
        assert (
            "./deploy/nats/permissions.conf:/etc/nats/permissions.conf:ro"
            in (compose["services"][node]["volumes"])
        )


def test_kubernetes_nats_and_services_use_the_same_users() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["merge"]["authorization"]["users"] == authorization_users()
    env = values["container"]["env"]
    for service in SERVICES:
        secret = env[password_variable(service)]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "krypton-nats", "key": f"{service}-password"}
    base = ROOT / "deploy" / "k8s" / "base"
    patches = [d for d in yaml.safe_load_all((base / "nats-credentials.yaml").read_text()) if d]
    urls = {}
    for patch in patches:
        (container,) = patch["spec"]["template"]["spec"]["containers"]
        (variable,) = container["env"]
        assert variable["name"] == "KRYPTON_NATS_URL"
        urls[patch["metadata"]["name"]] = variable["valueFrom"]["secretKeyRef"]["key"]
    assert urls == {s: f"{s}-url" for s in SERVICES}
    assert {"path": "nats-credentials.yaml"} in yaml.safe_load(
        (base / "kustomization.yaml").read_text()
    )["patches"]
    overlay = ROOT / "deploy" / "k8s" / "overlays" / "production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    literals = kustomization["configMapGenerator"][0]["literals"]
    assert "KRYPTON_STREAM_REPLICAS=3" in literals

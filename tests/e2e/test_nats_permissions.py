"""End to end under the production NATS permissions: every service as its own NATS user.

The platform runs with `nats_auth` (one user per service, permissions from
`krypton.bus.permissions`); upload, search, retrieval, rendering, a policy command and an audit
query exercise every service, and nats-server must log no permission violation. A permission a
service lacks shows up here; one it does not need fails `test_nats_permissions.py` offline.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import httpx
import nats
import pydicom
import pytest

from krypton.cli.platform import Platform, PlatformConfig
from krypton.contracts import subjects
from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import stow, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

STRUCTURE = "330781196"
STUDY = "1.2.826.0.1.3680043.8.498.660001"
SERIES, SOP = STUDY + ".1", STUDY + ".1.1"


@pytest.fixture(scope="module")
async def guarded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    state: Path = tmp_path_factory.mktemp("nats-auth")
    p = Platform(
        PlatformConfig(state_dir=state, http_port=0, nats_port=0, issuer_port=0, nats_auth=True),
        colour=False,
    )
    async with p.running(timeout=90):
        yield Running(p)


def _instance() -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.PatientID = "PERM-1"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _violations(platform: Platform) -> list[str]:
    log = platform.state_dir / "nats" / "nats.log"
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if re.search(r"(?i)violation", line)]


async def test_every_flow_works_and_no_service_exceeds_its_permissions(guarded: Running) -> None:
    url = guarded.url
    admin = guarded.admin()
    async with httpx.AsyncClient(timeout=60.0) as http:
        r = await stow(http, url, guarded.producer(STRUCTURE), [_instance()])
        assert r.status_code == 200, r.text
        assert await wait_for(http, url, "studies", admin, 1, StudyInstanceUID=STUDY)
        instance = f"{url}/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
        r = await http.get(f"{instance}/metadata", headers=admin)
        assert r.status_code == 200, r.text
        r = await http.get(
            instance, headers={**admin, "Accept": 'multipart/related; type="application/dicom"'}
        )
        assert r.status_code == 200, r.text
        r = await http.get(f"{instance}/rendered", headers={**admin, "Accept": "image/png"})
        assert r.status_code == 200, r.text
        base = guarded.platform.base_url
        r = await http.get(f"{base}/api/admin/structures", headers=admin)
        assert r.status_code == 200, r.text
        r = await http.get(f"{base}/api/audit/events", headers=admin)
        assert r.status_code == 200, r.text
    assert _violations(guarded.platform) == []


async def test_a_service_cannot_publish_outside_its_subjects(guarded: Running) -> None:
    platform = guarded.platform
    assert platform.nats is not None
    password = platform.nats_passwords["render"]
    server = platform.nats.url.replace("nats://", f"nats://render:{password}@")

    async def on_error(exc: Exception) -> None:
        """Permission errors are expected here."""

    nc = await nats.connect(server, error_cb=on_error, inbox_prefix="_INBOX.krypton.render")
    try:
        # render may not forge an upload nor a policy change, nor read the audit trail.
        await nc.publish(subjects.ingest_received(STRUCTURE), b"{}")
        await nc.publish(subjects.policy_changed("grant"), b"{}")
        await nc.subscribe(f"{subjects.AUDIT_EVENT}.>")
        await nc.flush()
    finally:
        await nc.close()
    deadline = time.monotonic() + 30.0
    expected = {
        f'Publish Violation - Subject "{subjects.ingest_received(STRUCTURE)}"',
        f'Publish Violation - Subject "{subjects.policy_changed("grant")}"',
        f'Subscription Violation - Subject "{subjects.AUDIT_EVENT}.>"',
    }
    while time.monotonic() < deadline:
        seen = {e for e in expected for line in _violations(platform) if e in line}
        if seen == expected:
            break
        await asyncio.sleep(0.2)
    assert seen == expected

"""The producer edge box end to end: DIMSE in, link cut, box crash, link restored, region ingest.

A regional platform (its nats-server with a leaf node listener) and an edge box (its own
nats-server, a leaf node of the region's, JetStream domain `edge-<finess>`) run as processes on
this machine; between the two nats-servers a small TCP relay plays the WAN, so the test can cut
and restore the link without touching either server. Studies go in with pynetdicom's SCU, as a
modality would send them.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from krypton.auth.dev_issuer import DevIssuer
from krypton.cli.platform import Platform, PlatformConfig
from krypton.dicom.synthetic import Population, SyntheticStudy, render_instances
from krypton.edge.testing import BoxProcess, LinkRelay, start_box, start_region_forwarder
from krypton.testing.servers import free_port

from .helpers import qido, value

pytestmark = pytest.mark.slow

_CHUNK = 48 * 1024  # small chunks, so that every instance travels in several
_LEAF_PASSWORD = secrets.token_urlsafe(18)


@dataclass
class Region:
    platform: Platform
    issuer: DevIssuer
    leaf_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def headers(self, role: str, sub: str, **claims: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint(role=role, sub=sub, **claims)}"}


@pytest.fixture(scope="module")
def population() -> Population:
    # One structure: every study is that structure's, the box's.
    return Population(seed=1010, n_patients=8, structures=1)


@pytest.fixture(scope="module")
def finess(population: Population) -> str:
    return population.structures[0].finess


@pytest.fixture(scope="module")
async def region(tmp_path_factory: pytest.TempPathFactory, finess: str) -> AsyncIterator[Region]:
    state = tmp_path_factory.mktemp("region")
    leaf_port = free_port()
    platform = Platform(
        PlatformConfig(
            state_dir=state,
            http_port=0,
            nats_port=0,
            issuer_port=0,
            leafnode_port=leaf_port,
            # The leaf node listener admits this box only, with its password.
            edge_leaf_passwords={finess: _LEAF_PASSWORD},
        ),
        colour=False,
    )
    running = Region(platform, DevIssuer(state / "issuer", platform.issuer_url), leaf_port)
    try:
        await platform.start(timeout=90)
        running.procs.append(
            await asyncio.to_thread(
                start_region_forwarder,
                platform.service_env(),
                [finess],
                state / "edge-region.log",
            )
        )
        yield running
    finally:
        for proc in running.procs:
            proc.terminate()
            proc.wait(15)
        await platform.stop()


@dataclass
class Box:
    process: BoxProcess
    relay: LinkRelay

    @property
    def dimse_port(self) -> int:
        return self.process.dimse_port

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
async def box(
    region: Region, finess: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Box]:
    relay = LinkRelay(region.leaf_port)
    await relay.start()
    token = region.issuer.mint(role="producer", sub=f"edge-{finess}", structure=finess)
    process = await asyncio.to_thread(
        start_box,
        tmp_path_factory.mktemp("edge"),
        finess,
        f"nats-leaf://127.0.0.1:{relay.port}",
        region.platform.dicomweb_url,
        token,
        ae_title="KRYPTON_EDGE",
        chunk_bytes=_CHUNK,
        allowed_calling_aes=["MODALITY", "WORKSTATION"],
        hub_password=_LEAF_PASSWORD,
    )
    try:
        yield Box(process, relay)
    finally:
        await asyncio.to_thread(process.stop)
        await relay.cut()


def _files(study: SyntheticStudy, directory: Path) -> list[Path]:
    paths = []
    for data in render_instances(study, rows=128, cols=128):
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _store(port: int, paths: list[Path], calling: str = "MODALITY") -> list[int]:
    """C-STORE each file with a fresh association, as a modality would; the statuses."""
    ae = AE(ae_title=calling)
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}
    for uid in classes:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="KRYPTON_EDGE")
    assert assoc.is_established
    try:
        statuses = []
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def _find_studies(port: int) -> list[Dataset]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="KRYPTON_EDGE")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    query.StudyDate = ""
    query.NumberOfStudyRelatedInstances = ""
    found: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            assert status is not None
            assert status.Status in (0x0000, 0xFF00), status
            if status.Status == 0xFF00 and identifier is not None:
                found.append(identifier)
    finally:
        assoc.release()
    return found


def _get_study(port: int, study_uid: str, sop_classes: set[str]) -> list[Dataset]:
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in sop_classes:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="KRYPTON_EDGE",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            assert status is not None
            assert status.Status in (0x0000, 0xFF00), status
    finally:
        assoc.release()
    return received


def _echo(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="KRYPTON_EDGE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


async def _status(client: httpx.AsyncClient, box: Box) -> dict[str, Any]:
    response = await client.get(f"{box.url}/status")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def _until(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    pytest.fail(f"{what}: not reached after {timeout} s (last: {last!r})")


def _instances(study: SyntheticStudy) -> int:
    return sum(s.instance_count for s in study.series)


def _studies(population: Population, n: int, start: int) -> Iterator[SyntheticStudy]:
    return population.iter_studies(n, start=start, max_instances_per_series=2)


async def test_instances_reach_the_region_once_across_a_cut_link(
    region: Region, box: Box, population: Population, finess: str, tmp_path: Path
) -> None:
    headers = region.headers("producer", f"ris-{finess}", structure=finess)
    other = region.headers("producer", "ris-other", structure="999999999")
    before, during = list(_studies(population, 1, 0)), list(_studies(population, 2, 1))
    first = _files(before[0], tmp_path)
    async with httpx.AsyncClient(timeout=30.0) as client:
        assert await asyncio.to_thread(_echo, box.dimse_port, "MODALITY")
        assert not await asyncio.to_thread(_echo, box.dimse_port, "STRANGER")
        await _until("link up", lambda: _link_is(client, box, "up"))
        assert await asyncio.to_thread(_store, box.dimse_port, first) == [0] * len(first)

        url = region.platform.dicomweb_url

        async def searchable(study: SyntheticStudy) -> bool:
            found = await qido(
                client,
                url,
                "studies",
                headers,
                StudyInstanceUID=study.study_uid,
                includefield="NumberOfStudyRelatedInstances",
            )
            return bool(found) and value(found[0], "00201208") == _instances(study)

        await _until("first study searchable", lambda: searchable(before[0]))

        # The WAN goes down: the box keeps accepting and spooling.
        await box.relay.cut()
        await _until("link down", lambda: _link_is(client, box, "down"))
        later = [p for study in during for p in _files(study, tmp_path)]
        assert await asyncio.to_thread(_store, box.dimse_port, later) == [0] * len(later)
        # The box itself crashes (SIGKILL) with everything still on it, and comes back:
        # what it acknowledged was on disk.
        await asyncio.to_thread(box.process.kill)
        await asyncio.to_thread(box.process.start)
        # A modality resending instances already forwarded: still stored once.
        assert await asyncio.to_thread(_store, box.dimse_port, first[:2]) == [0, 0]
        status = await _until("instances held on the box", lambda: _holding(client, box))
        assert status["link"] == "down"
        for study in during:
            assert not await qido(client, url, "studies", headers, StudyInstanceUID=study.study_uid)

        # The link comes back: everything is forwarded.
        await box.relay.restore()
        for study in during:
            await _until("study sent while cut searchable", lambda s=study: searchable(s))
        status = await _until("box drained", lambda: _drained(client, box))
        assert status["link"] == "up"
        assert status["last_forward_at"] is not None
        assert status["received_total"] == 2  # since the restart

        # Every instance once, attributed to the box's structure and to no other.
        for study in [*before, *during]:
            listed = await qido(client, url, f"studies/{study.study_uid}/instances", headers)
            sops = [value(item, "00080018") for item in listed]
            assert len(sops) == len(set(sops)) == _instances(study)
            assert not await qido(client, url, "studies", other, StudyInstanceUID=study.study_uid)

        # Each instance's arrival is audited once, as a store by the box's structure.
        admin = region.headers("admin", "admin-1")
        total = sum(_instances(study) for study in [*before, *during])
        audit_url = f"{region.platform.base_url}/api/audit/events"

        seen: list[int] = []

        async def stores() -> list[dict[str, Any]] | None:
            response = await client.get(
                audit_url, headers=admin, params={"type": "store", "actor": f"edge-{finess}"}
            )
            assert response.status_code in (200, 503), response.text
            found = response.json() if response.status_code == 200 else []
            seen.append(len(found))
            return found if len(found) >= total else None

        try:
            # The audit service is the slowest consumer on a loaded machine: a generous wait.
            events = await _until(f"{total} store events audited", stores, timeout=180.0)
        finally:
            print("audit counts seen", seen[-5:])  # noqa: T201
        assert len(events) == total
        assert {e["event"]["actor"]["structure"] for e in events} == {finess}

        # C-FIND through the box answers what QIDO answers for the structure.
        expected = {value(item, "0020000D") for item in await qido(client, url, "studies", headers)}
        found = await asyncio.to_thread(_find_studies, box.dimse_port)
        assert {str(ds.StudyInstanceUID) for ds in found} == expected
        assert all(ds.QueryRetrieveLevel == "STUDY" for ds in found)

        # C-GET through the box returns the study's instances as stored.
        classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in first}
        got = await asyncio.to_thread(_get_study, box.dimse_port, before[0].study_uid, classes)
        assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(p.stem for p in first)

        # The DICOMweb proxy answers local viewers with the structure's view.
        proxied = await client.get(f"{box.url}/dicomweb/studies")
        assert proxied.status_code == 200
        assert {value(item, "0020000D") for item in proxied.json()} == expected


async def test_unparseable_instance_is_refused_and_quarantined(box: Box, tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "X"  # no Study/Series Instance UID: the box cannot forward it
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    async with httpx.AsyncClient(timeout=30.0) as client:
        before = (await _status(client, box))["quarantined"]
        assert await asyncio.to_thread(_store, box.dimse_port, [path]) == [0xC000]
        assert (await _status(client, box))["quarantined"] == before + 1


async def _link_is(client: httpx.AsyncClient, box: Box, state: str) -> bool:
    return (await _status(client, box))["link"] == state


async def _drained(client: httpx.AsyncClient, box: Box) -> dict[str, Any] | None:
    status = await _status(client, box)
    if status["spool_instances"] == 0 and status["queued_messages"] == 0:
        return status
    return None


async def _holding(client: httpx.AsyncClient, box: Box) -> dict[str, Any] | None:
    status = await _status(client, box)
    return status if status["spool_instances"] + status["queued_messages"] > 0 else None

"""End to end with real processes: kill -9 the index mid-ingest; every acknowledged instance ends
up indexed exactly once."""

from __future__ import annotations

import asyncio
import signal
from io import BytesIO

import asyncpg
import httpx
import pydicom
import pytest

from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import stow, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

STRUCTURE = "860780048"
STUDIES = 3
PER_STUDY = 60
ROOT = "1.2.826.0.1.3680043.8.498.990"


def _instances() -> list[tuple[str, bytes]]:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    template = pydicom.dcmread(path)
    out: list[tuple[str, bytes]] = []
    for s in range(STUDIES):
        for i in range(PER_STUDY):
            ds = template.copy()
            ds.PatientID = f"CRASH{s}"
            ds.StudyInstanceUID = f"{ROOT}.{s}"
            ds.SeriesInstanceUID = f"{ROOT}.{s}.1"
            ds.SOPInstanceUID = f"{ROOT}.{s}.1.{i}"
            ds.InstanceNumber = i
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append((ds.StudyInstanceUID, buf.getvalue()))
    return out


async def test_killing_index_mid_ingest_loses_nothing_and_counts_once(
    platform: Running, http: httpx.AsyncClient
) -> None:
    instances = _instances()
    headers = platform.producer(STRUCTURE)
    batches = [instances[i : i + 10] for i in range(0, len(instances), 10)]
    acknowledged = 0

    async def send(batch: list[tuple[str, bytes]]) -> int:
        response = await stow(http, platform.url, headers, [data for _, data in batch])
        assert response.status_code == 200, response.text
        return len(response.json()["00081199"]["Value"])

    killed = 0
    for n, batch in enumerate(batches):
        acknowledged += await send(batch)
        if n in (3, 9):  # kill -9 twice while uploads keep coming
            supervisor = platform.platform.supervisor
            restarts = supervisor.children["index"].restarts
            supervisor.kill("index", signal.SIGKILL)
            killed += 1
            # The next kill must find a live process: wait for the supervisor's restart.
            await supervisor.wait_restarted("index", restarts + 1)
    assert killed == 2
    assert acknowledged == STUDIES * PER_STUDY

    admin = platform.admin()
    for s in range(STUDIES):
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            found = await wait_for(
                http, platform.url, "studies", admin, 1, StudyInstanceUID=f"{ROOT}.{s}"
            )
            if found and value(found[0], "00201208") == PER_STUDY:
                break
            assert asyncio.get_running_loop().time() < deadline, found
            await asyncio.sleep(0.2)
    assert platform.platform.pg_dsn is not None
    conn = await asyncpg.connect(platform.platform.pg_dsn)
    try:
        rows = await conn.fetchval(
            "select count(*) from index.instances where study_uid like $1", f"{ROOT}.%"
        )
        counted = await conn.fetchval(
            "select sum(num_instances) from index.studies where study_uid like $1", f"{ROOT}.%"
        )
        series_counted = await conn.fetchval(
            "select sum(num_instances) from index.series where study_uid like $1", f"{ROOT}.%"
        )
    finally:
        await conn.close()
    assert rows == counted == series_counted == STUDIES * PER_STUDY
    assert platform.platform.supervisor.children["index"].restarts >= 2

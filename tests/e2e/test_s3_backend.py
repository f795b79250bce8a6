"""End to end with the S3 object store (a real S3-protocol server): production's storage path,
selected by settings only."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from minio import Minio

from krypton.cli.platform import Platform, PlatformConfig
from krypton.dicom.testfiles import pydicom_test_files
from krypton.testing.servers import S3Server

from .conftest import Running
from .helpers import stow, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.nats, pytest.mark.postgres]

BUCKET = "krypton-e2e"
STRUCTURE = "330781196"


@pytest.fixture(scope="module")
async def s3_platform(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> AsyncIterator[Running]:
    state: Path = tmp_path_factory.mktemp("platform-s3")
    env = {
        "KRYPTON_STORAGE__BACKEND": "s3",
        "KRYPTON_STORAGE__S3__ENDPOINT": s3_server.endpoint,
        "KRYPTON_STORAGE__S3__ACCESS_KEY": "krypton",
        "KRYPTON_STORAGE__S3__SECRET_KEY": "krypton-secret",
        "KRYPTON_STORAGE__S3__BUCKET": BUCKET,
        "KRYPTON_STORAGE__S3__SECURE": "false",
    }
    p = Platform(
        PlatformConfig(state_dir=state, http_port=0, nats_port=0, issuer_port=0, extra_env=env),
        colour=False,
    )
    async with p.running(timeout=90):
        yield Running(p)


async def test_instances_stored_through_s3_are_found_and_kept_byte_for_byte(
    s3_platform: Running, s3_server: S3Server, http: httpx.AsyncClient
) -> None:
    names = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
    files = [p for p in pydicom_test_files() if p.name in names]
    response = await stow(
        http, s3_platform.url, s3_platform.producer(STRUCTURE), [f.read_bytes() for f in files]
    )
    assert response.status_code == 200, response.text
    stored = response.json()["00081199"]["Value"]
    assert len(stored) == len(files)

    client = Minio(
        s3_server.endpoint, access_key="krypton", secret_key="krypton-secret", secure=False
    )
    keys = [o.object_name for o in client.list_objects(BUCKET, prefix="dicom/", recursive=True)]
    assert len(keys) == len(files)
    originals = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    copies = {hashlib.sha256(client.get_object(BUCKET, k).read()).hexdigest() for k in keys}
    assert copies == originals
    assert not list(client.list_objects(BUCKET, prefix="staging/", recursive=True))

    admin = s3_platform.admin()
    for item in stored:
        sop = value(item, "00081155")
        found = await wait_for(http, s3_platform.url, "instances", admin, 1, SOPInstanceUID=sop)
        assert len(found) == 1

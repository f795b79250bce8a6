"""Fixtures for the index tests: a migrated, emptied ``index`` schema and an event factory."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from krypton.contracts.ingest.v1 import (
    InstanceAttributes,
    InstanceStored,
    PatientIdentity,
    SeriesAttributes,
    StudyAttributes,
)
from krypton.index.schema import migrate

_counter = itertools.count(1)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

MakeEvent = Callable[..., InstanceStored]

_TRUNCATE = "TRUNCATE index.studies, index.series, index.instances"


@pytest.fixture
async def index_pool(pg_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database with the index schema migrated and its tables empty."""
    await migrate(pg_pool)
    await pg_pool.execute(_TRUNCATE)
    yield pg_pool
    await pg_pool.execute(_TRUNCATE)  # leave nothing behind for other suites


def _split(fields: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in list(fields.items()) if k.startswith(prefix)}


@pytest.fixture
def make_event() -> MakeEvent:
    """The `build_event` factory (a fixture: test modules cannot import this conftest)."""
    return build_event


def build_event(
    *,
    study_uid: str = "1.2.3.1",
    series_uid: str | None = None,
    sop_uid: str | None = None,
    structure: str = "330000001",
    patient_id: str = "IPP1",
    ins: str | None = None,
    size: int = 1000,
    stored_at: str = "2024-05-01T10:00:00Z",
    pixel_data_offset: int | None = None,
    **attributes: Any,
) -> InstanceStored:
    """One InstanceStored; `study_x=`, `series_x=`, `instance_x=` set the attribute `x`."""
    unknown = [k for k in attributes if not k.startswith(("study_", "series_", "instance_"))]
    assert not unknown, unknown
    n = next(_counter)
    series_uid = series_uid or f"{study_uid}.1"
    sop_uid = sop_uid or f"{series_uid}.{n}"
    key = f"INS:{ins}" if ins else f"IPP:{structure}:{patient_id}"
    return InstanceStored(
        structure=structure,
        object_key=f"objects/{sop_uid}",
        sha256=f"{n:064x}",
        size=size,
        stored_at=stored_at,
        pixel_data_offset=pixel_data_offset,
        patient=PatientIdentity(key=key, patient_id=patient_id, issuer=structure, ins=ins),
        study=StudyAttributes(study_uid=study_uid, **_split(attributes, "study_")),
        series=SeriesAttributes(series_uid=series_uid, **_split(attributes, "series_")),
        instance=InstanceAttributes(
            sop_instance_uid=sop_uid,
            sop_class_uid=attributes.get("instance_sop_class_uid", CT_IMAGE),
            transfer_syntax_uid=EXPLICIT_LE,
            **{k: v for k, v in _split(attributes, "instance_").items() if k != "sop_class_uid"},
        ),
    )

"""WADO-RS support: where the instances of a study, series or instance are stored.

One SQL statement per request, with the caller's access rule (`qido_sql.access_predicate`)
inside it: a study the caller may not see is answered exactly as one that does not exist (404).
The plan goes through ``series_study_idx`` then ``instances_series_idx`` for a study, the
instances primary key for one instance.
"""

from __future__ import annotations

import re
from typing import Final

import asyncpg

from krypton.bus.codec import encode
from krypton.contracts.index.v1 import LocatedInstance, LocateRequest, LocateResponse
from krypton.index.qido_sql import access_basis, access_predicate

__all__ = ["build_locate_sql", "handle_locate", "run_locate"]

_COLUMNS: Final = (
    "i.study_uid, i.series_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,"
    " i.object_key, i.sha256, i.size, i.number_of_frames, i.rows, i.columns,"
    " i.bits_allocated, i.photometric_interpretation, i.pixel_data_offset"
)


def build_locate_sql(request: LocateRequest) -> tuple[str, list[object]]:
    """The statement answering `request` and its bind parameters."""
    # access_predicate numbers its placeholders from $1; ours follow them.
    access_sql, access_params = access_predicate(request.actor, "st")
    params = list(access_params)

    def add(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    basis_sql = "NULL"
    basis = access_basis(request.actor, "st")
    if basis is not None:
        fragment, fragment_params = basis
        offset = len(params)
        basis_sql = re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + offset}", fragment)
        params.extend(fragment_params)

    conditions = [access_sql]
    if request.sop_instance_uid is not None:
        conditions.append(f"i.sop_instance_uid = {add(request.sop_instance_uid)}")
    conditions.append(f"se.study_uid = {add(request.study_uid)}")
    if request.series_uid is not None:
        conditions.append(f"se.series_uid = {add(request.series_uid)}")
    sql = (
        f"SELECT {_COLUMNS}, ({basis_sql}) AS access_basis FROM index.series se"
        " JOIN index.studies st ON st.study_uid = se.study_uid"
        " JOIN index.instances i ON i.series_uid = se.series_uid"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY se.series_number, se.series_uid, i.instance_number, i.sop_instance_uid"
    )
    return sql, params


async def run_locate(pool: asyncpg.Pool, request: LocateRequest) -> LocateResponse:
    """Answer a locate request: 200 with the instances, or 404 (missing or not visible)."""
    sql, params = build_locate_sql(request)
    rows = await pool.fetch(sql, *params)
    if not rows:
        return LocateResponse(status=404, reason="not found")
    return LocateResponse(
        status=200, instances=[LocatedInstance(**dict(row.items())) for row in rows]
    )


async def handle_locate(pool: asyncpg.Pool, request: LocateRequest) -> bytes:
    """The ``svc.index.locate`` handler body: the encoded `LocateResponse` for `request`."""
    return encode(await run_locate(pool, request))

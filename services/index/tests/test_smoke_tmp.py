import msgspec, json
import pytest
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.index.qido_sql import run_qido, build_qido_sql
from krypton.index.store import upsert_batch
from krypton.contracts.ingest.v1 import *

def ev(study, series, sop, **kw):
    return InstanceStored(structure="S1", object_key="k", sha256="x", size=10, stored_at="2024-01-01T00:00:00Z",
        patient=PatientIdentity(key="IPP:S1:1", patient_id="1"),
        study=StudyAttributes(study_uid=study, study_date="20240102", study_time="101112", patient_name="Hélène^Dupont"),
        series=SeriesAttributes(series_uid=series, modality="CT", series_number=1),
        instance=InstanceAttributes(sop_instance_uid=sop, sop_class_uid="1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=3))

async def test_smoke(index_pool):
    n = await upsert_batch(index_pool, [ev("1.1", "1.1.1", "1.1.1.1"), ev("1.1", "1.1.2", "1.1.2.1")])
    assert n == 2
    assert await upsert_batch(index_pool, [ev("1.1", "1.1.1", "1.1.1.1")]) == 0
    actor = Actor(sub="a", role=RoleValues.ADMIN, issuer="i")
    for level, params in [("study", [("PatientName", "helene*"), ("includefield", "all")]), ("series", []), ("instance", [("StudyDate", "2024-")])]:
        req = QidoRequest(query=parse_qido(level, params), actor=actor, base_url="http://h/dw")
        print(build_qido_sql(req))
        r = await run_qido(index_pool, req)
        print(r.status, r.reason, r.count)
        print(json.dumps(json.loads(r.body), indent=None)[:1500])

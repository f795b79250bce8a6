"""The box's DIMSE listener on a real socket, with a real pynetdicom SCU (no region needed)."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from krypton.dicom.synthetic import Population, render_instances
from krypton.edge.dimse import DimseServer, find_params
from krypton.edge.region_client import RegionClient
from krypton.edge.settings import EdgeSettings
from krypton.edge.spool import Spool
from krypton.testing.servers import free_port


@pytest.fixture
def files() -> list[bytes]:
    study = next(Population(seed=7, n_patients=2, structures=1).iter_studies(1))
    return list(render_instances(study, rows=32, cols=32))[:3]


@pytest.fixture
def server(tmp_path: Path, files: list[bytes]) -> Iterator[DimseServer]:
    # Room for two instances and a bit: the third is refused.
    limit = len(files[0]) + len(files[1]) + 100
    settings = EdgeSettings(
        structure="010000001",
        dimse_host="127.0.0.1",
        dimse_port=free_port(),
        allowed_calling_aes=["MODALITY"],
        state_dir=tmp_path,
    )
    spool = Spool(tmp_path / "spool", limit)
    dimse = DimseServer(
        settings, spool, RegionClient("http://127.0.0.1:9/dicomweb", lambda: "t"), lambda: None
    )
    dimse.start()
    yield dimse
    dimse.stop()


def _store(port: int, payloads: list[bytes], calling: str = "MODALITY") -> list[int]:
    datasets = [dcmread(BytesIO(p)) for p in payloads]
    ae = AE(ae_title=calling)
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="KRYPTON_EDGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_store_spools_until_full_then_answers_out_of_resources(
    server: DimseServer, files: list[bytes]
) -> None:
    assert _store(server.settings.dimse_port, files) == [0x0000, 0x0000, 0xA700]
    pending = server.spool.pending()
    assert len(pending) == 2
    # What was spooled is the instance as sent (File Meta rebuilt by pynetdicom).
    assert dcmread(pending[0].path).SOPInstanceUID == dcmread(BytesIO(files[0])).SOPInstanceUID


def test_unparseable_data_is_refused_and_quarantined(server: DimseServer) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert _store(server.settings.dimse_port, [out.getvalue()]) == [0xC000]
    assert server.spool.quarantined == 1
    assert server.spool.pending() == []


def test_only_allowed_calling_aes_associate(server: DimseServer) -> None:
    for calling, allowed in (("MODALITY", True), ("STRANGER", False)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.settings.dimse_port, ae_title="KRYPTON_EDGE")
        assert assoc.is_established is allowed
        if allowed:
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()


def test_find_identifier_becomes_a_qido_search() -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "IPP123"
    query.StudyDate = "20240101-20241231"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    path, params = find_params(query, "STUDY")
    assert path == "studies"
    assert ("PatientID", "IPP123") in params
    assert ("StudyDate", "20240101-20241231") in params
    assert ("includefield", "StudyInstanceUID") in params
    assert ("includefield", "NumberOfStudyRelatedInstances") in params

    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = "1.2.3"
    query.Modality = "CT"
    path, params = find_params(query, "SERIES")
    assert path == "studies/1.2.3/series"
    assert ("Modality", "CT") in params
    with pytest.raises(ValueError, match="Series Instance UID"):
        find_params(query, "IMAGE")

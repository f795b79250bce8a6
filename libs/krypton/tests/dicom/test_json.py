"""DICOM JSON: element encoding, bulk data URIs (deferred values never loaded), PN groups."""

from __future__ import annotations

import base64
import io
import json

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from krypton.dicom.header import read_header
from krypton.dicom.json import dataset_to_dicom_json, encode_pn
from krypton.dicom.testfiles import pydicom_test_files_dir


def test_ct_small_metadata_has_keywords_as_tags_and_bulk_uris() -> None:
    header = read_header((pydicom_test_files_dir() / "CT_small.dcm").read_bytes())
    seen: list[str] = []

    def uri(path: str) -> str:
        seen.append(path)
        return f"https://example.invalid/bulk/{path}"

    result = dataset_to_dicom_json(header.dataset, uri)
    json.dumps(result)  # serialisable as is
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert result["00100020"] == {"vr": "LO", "Value": ["1CT1"]}
    assert result["00080016"]["Value"] == [CTImageStorage]
    assert "7FE00010" not in result  # the header never holds the pixels
    assert result["00431029"] == {
        "vr": "OB",
        "BulkDataURI": "https://example.invalid/bulk/00431029",
    }
    assert seen == ["00431029"]


def test_without_a_bulk_handler_binary_values_are_inline() -> None:
    header = read_header((pydicom_test_files_dir() / "CT_small.dcm").read_bytes())
    result = dataset_to_dicom_json(header.dataset, None)
    assert "InlineBinary" in result["00431029"]


def _file_with_blob(blob: bytes) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "P"
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x01\x02" * 1000)
    item.add_new(0x00090010, "LO", "KRYPTON")
    ds.add_new(0x00091001, "SQ", [item])
    ds.add_new(0x00090010, "LO", "KRYPTON")
    ds.add_new(0x00091002, "OB", blob)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_deferred_values_become_bulk_uris_without_being_read() -> None:
    blob = b"\xab" * 200_000
    header = read_header(_file_with_blob(blob), defer_size=1024)
    result = dataset_to_dicom_json(header.dataset, lambda path: f"bulk/{path}")
    assert result["00091002"] == {"vr": "OB", "BulkDataURI": "bulk/00091002"}
    assert header.dataset.get_item(0x00091002, keep_deferred=True).value is None
    # Nested binary values get a path through the sequence item.
    nested = result["00091001"]["Value"][0]["00091010"]
    assert nested == {"vr": "OB", "BulkDataURI": "bulk/00091001/0/00091010"}


def test_small_binary_values_stay_inline_under_the_threshold() -> None:
    header = read_header(_file_with_blob(b"\x01\x02\x03\x04"))
    result = dataset_to_dicom_json(header.dataset, lambda path: f"bulk/{path}")
    assert base64.b64decode(result["00091002"]["InlineBinary"]) == b"\x01\x02\x03\x04"


def test_implicit_vr_files_get_dictionary_vrs() -> None:
    header = read_header((pydicom_test_files_dir() / "MR_small_implicit.dcm").read_bytes())
    result = dataset_to_dicom_json(header.dataset, None)
    assert result["00100010"]["vr"] == "PN"
    assert result["00280010"] == {"vr": "US", "Value": [64]}
    assert all(" or " not in element["vr"] for element in result.values())


def test_matches_pydicom_for_plain_elements() -> None:
    ds = pydicom.dcmread(pydicom_test_files_dir() / "MR_small.dcm", stop_before_pixels=True)
    ours = dataset_to_dicom_json(ds, None)
    theirs = ds.to_json_dict()
    for key, value in ours.items():
        if key in theirs:
            assert value == theirs[key], key


def test_encode_pn_splits_groups() -> None:
    assert encode_pn("DUPONT^Marie-Hélène") == {"Alphabetic": "DUPONT^Marie-Hélène"}
    assert encode_pn("Yamada^Tarou=山田^太郎=やまだ^たろう") == {
        "Alphabetic": "Yamada^Tarou",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }
    assert encode_pn("=山田^太郎") == {"Ideographic": "山田^太郎"}
    assert encode_pn("") == {}

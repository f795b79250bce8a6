"""End to end: WADO-RS retrieval of every pydicom test file Krypton stores.

Original bytes, Explicit VR Little Endian transcoding (pixels equal to pydicom's decode for
lossless syntaxes), frames (uncompressed and as stored), rendered PNG against a numpy reference
rendering computed here, access (hidden looks missing), and dicomweb-client as a real client.
"""

from __future__ import annotations

import asyncio
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from krypton.dicom.identity import ins_key
from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import stow, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

STRUCTURE = "330781197"
OTHER = "330781198"
DICOM = 'multipart/related; type="application/dicom"'
LOSSY = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203",
}


@dataclass
class Stored:
    path: Path
    study: str
    series: str
    sop: str
    syntax: str
    pixels: bool

    @property
    def url(self) -> str:
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop}"


def parse_multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of every part of a multipart/related response."""
    match = re.search(r"boundary=\"?([^\";]+)\"?", response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        content_type = ""
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-type:"):
                content_type = line.split(":", 1)[1].strip()
        parts.append((content_type, body[:-2] if body.endswith(b"\r\n") else body))
    return parts


def _decodable(path: Path) -> NDArray[Any] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path).pixel_array
        except Exception:
            return None


@pytest.fixture(scope="module")
async def stored(platform: Running) -> list[Stored]:
    """STOW every pydicom test file; return those Krypton accepted."""
    headers = platform.producer(STRUCTURE)
    result: list[Stored] = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        for path in pydicom_test_files():
            response = await stow(client, platform.url, headers, [path.read_bytes()])
            if response.status_code != 200:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=False)
            result.append(
                Stored(
                    path,
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    str(ds.file_meta.TransferSyntaxUID),
                    "PixelData" in ds,
                )
            )
        # Files sharing a SOP Instance UID: the first stored wins; keep one per SOP.
        unique = {s.sop: s for s in reversed(result)}
        await wait_for(client, platform.url, "instances", platform.admin(), len(unique), limit=1000)
    return list({s.sop: s for s in reversed(result)}.values())


async def test_every_stored_instance_comes_back_byte_for_byte(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    assert len(stored) > 20
    headers = {**platform.producer(STRUCTURE), "Accept": DICOM}
    for item in stored:
        response = await http.get(f"{platform.url}/{item.url}", headers=headers)
        assert response.status_code == 200, (item.path.name, response.text)
        [(content_type, body)] = parse_multipart(response)
        assert content_type == f"application/dicom; transfer-syntax={item.syntax}"
        assert body == item.path.read_bytes(), item.path.name


async def test_transcoding_to_explicit_le_keeps_pydicoms_pixels(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    headers = {
        **platform.producer(STRUCTURE),
        "Accept": f"{DICOM}; transfer-syntax={ExplicitVRLittleEndian}",
    }
    checked = 0
    for item in stored:
        reference = _decodable(item.path) if item.pixels else None
        response = await http.get(f"{platform.url}/{item.url}", headers=headers)
        if item.pixels and reference is None:
            assert response.status_code in (200, 406), item.path.name
            continue
        assert response.status_code == 200, (item.path.name, response.text)
        [(content_type, body)] = parse_multipart(response)
        assert content_type.endswith(ExplicitVRLittleEndian)
        ds = pydicom.dcmread(io.BytesIO(body))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == item.sop
        if reference is not None and item.syntax not in LOSSY:
            np.testing.assert_array_equal(ds.pixel_array, reference, err_msg=item.path.name)
            checked += 1
    assert checked > 10


async def test_frames_come_uncompressed_or_as_stored(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    auth = platform.producer(STRUCTURE)
    octet = {**auth, "Accept": 'multipart/related; type="application/octet-stream"'}
    anything = {
        **auth,
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    }
    for item in stored:
        reference = _decodable(item.path) if item.pixels else None
        if reference is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(item.path)
        frames = int(ds.get("NumberOfFrames") or 1)
        last = frames
        # The frame list holds non-duplicate frame numbers (PS3.18): "1" alone for one frame.
        wanted = f"1,{last}" if last > 1 else "1"
        response = await http.get(f"{platform.url}/{item.url}/frames/{wanted}", headers=octet)
        assert response.status_code == 200, (item.path.name, response.text)
        parts = parse_multipart(response)
        assert len(parts) == (2 if last > 1 else 1)
        assert parts[0][0].startswith("application/octet-stream")
        if ds.BitsAllocated == 1 or item.syntax in LOSSY:
            continue
        expected = reference if frames > 1 else reference[np.newaxis]
        for (_, body), index in zip(parts, (0, last - 1)[: len(parts)], strict=True):
            frame = np.frombuffer(body, dtype=expected.dtype.newbyteorder("<"))
            np.testing.assert_array_equal(
                frame[: expected[index].size].reshape(expected[index].shape),
                expected[index],
                err_msg=item.path.name,
            )
        if not UID(item.syntax).is_compressed:
            continue
        response = await http.get(f"{platform.url}/{item.url}/frames/{last}", headers=anything)
        assert response.status_code == 200, (item.path.name, response.text)
        [(content_type, body)] = parse_multipart(response)
        assert content_type.endswith(f"transfer-syntax={item.syntax}")
        stored_frames = list(generate_frames(ds.PixelData, number_of_frames=frames))
        assert body.rstrip(b"\0") == stored_frames[last - 1].rstrip(b"\0"), item.path.name


def reference_render(path: Path) -> NDArray[np.uint8]:
    """An independent rendering of frame 1: modality LUT, window (or min/max), photometry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    if int(ds.get("NumberOfFrames") or 1) > 1:
        arr = arr[0]
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return (rgb if rgb.dtype == np.uint8 else rgb >> 8).astype(np.uint8)
    if arr.ndim == 3:
        shift = max(int(ds.BitsStored) - 8, 0)
        return np.clip(arr.astype(np.uint64) >> shift, 0, 255).astype(np.uint8)
    x = apply_modality_lut(arr, ds).astype(np.float64)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    else:
        lo, hi = np.percentile(x, [0.5, 99.5])
        if hi <= lo:
            lo, hi = x.min(), x.max() if x.max() > x.min() else x.min() + 1
        y = ((x - (lo + hi) / 2) / (hi - lo) + 0.5) * 255
    out = np.rint(np.clip(y, 0, 255)).astype(np.uint8)
    return 255 - out if photometric == "MONOCHROME1" else out


async def test_rendered_png_matches_an_independent_reference(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    headers = {**platform.producer(STRUCTURE), "Accept": "image/png"}
    compared = 0
    for item in stored:
        if not item.pixels or _decodable(item.path) is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        if "VOILUTSequence" in ds or int(ds.get("BitsAllocated", 8)) == 1:
            continue
        response = await http.get(f"{platform.url}/{item.url}/rendered", headers=headers)
        assert response.status_code == 200, (item.path.name, response.text)
        assert response.headers["content-type"] == "image/png"
        image = np.asarray(Image.open(io.BytesIO(response.content)))
        expected = reference_render(item.path)
        assert image.shape == expected.shape, item.path.name
        difference = np.abs(image.astype(np.int16) - expected.astype(np.int16))
        assert difference.max() <= 1, item.path.name
        compared += 1
    assert compared > 10


async def test_metadata_has_bulk_data_uris_and_an_etag(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    auth = platform.producer(STRUCTURE)
    item = next(s for s in stored if s.pixels and s.syntax == ExplicitVRLittleEndian)
    response = await http.get(f"{platform.url}/studies/{item.study}/metadata", headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    ours = next(i for i in body if i["00080018"]["Value"][0] == item.sop)
    assert ours["7FE00010"]["BulkDataURI"].startswith(f"{platform.url}/{item.url}/bulkdata/")
    assert ours["00083002"]["Value"] == [item.syntax]
    again = await http.get(
        f"{platform.url}/studies/{item.study}/metadata",
        headers={**auth, "If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304


async def test_hidden_and_missing_studies_look_the_same(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    item = stored[0]
    other = platform.producer(OTHER)
    missing = "1.2.3.4.5.6.7.8.9"
    for suffix in ("", "/metadata", "/thumbnail"):
        hidden = await http.get(f"{platform.url}/studies/{item.study}{suffix}", headers=other)
        absent = await http.get(f"{platform.url}/studies/{missing}{suffix}", headers=other)
        assert hidden.status_code == absent.status_code == 404
        assert hidden.json()["detail"] == absent.json()["detail"]
        # Stage timings only on answers that disclose data: none to tell the two apart.
        assert "server-timing" not in hidden.headers
        assert "server-timing" not in absent.headers
    seen = await http.get(
        f"{platform.url}/{item.url}/metadata", headers=platform.producer(STRUCTURE)
    )
    assert seen.status_code == 200, seen.text
    assert "total;dur=" in seen.headers["server-timing"]


async def test_unproducible_syntax_and_media_types_are_406(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    auth = platform.producer(STRUCTURE)
    item = next(s for s in stored if s.pixels and s.syntax == ExplicitVRLittleEndian)
    jpeg_lossless = f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.57"  # decoded, not written
    response = await http.get(
        f"{platform.url}/{item.url}", headers={**auth, "Accept": jpeg_lossless}
    )
    assert response.status_code == 406
    response = await http.get(f"{platform.url}/{item.url}", headers={**auth, "Accept": "text/html"})
    assert response.status_code == 406
    response = await http.get(
        f"{platform.url}/{item.url}/rendered", headers={**auth, "Accept": "image/gif"}
    )
    assert response.status_code == 406


async def test_dicomweb_client_retrieves_like_a_viewer(
    platform: Running, stored: list[Stored]
) -> None:
    from dicomweb_client.api import DICOMwebClient

    item = next(s for s in stored if s.pixels and s.syntax == ExplicitVRLittleEndian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(item.path).pixel_array.size > 0
    token = platform.token("producer", "viewer", structure=STRUCTURE)

    def run() -> None:
        client = DICOMwebClient(platform.url, headers={"Authorization": f"Bearer {token}"})
        instances = client.retrieve_study(item.study)
        assert item.sop in {str(ds.SOPInstanceUID) for ds in instances}
        metadata = client.retrieve_series_metadata(item.study, item.series)
        assert metadata
        assert metadata[0]["0020000E"]["Value"] == [item.series]
        frames = client.retrieve_instance_frames(item.study, item.series, item.sop, [1])
        assert len(frames) == 1
        assert len(frames[0]) >= 1
        image = client.retrieve_instance_rendered(
            item.study, item.series, item.sop, media_types=("image/jpeg",)
        )
        assert image[:2] == b"\xff\xd8"

    await asyncio.to_thread(run)


async def test_instances_transcode_to_every_lossless_syntax_with_the_same_pixels(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    auth = platform.producer(STRUCTURE)
    sources = {
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    }
    by_syntax = {
        s.syntax: s
        for s in reversed(stored)
        if s.pixels
        and s.syntax in sources
        and pydicom.dcmread(s.path, stop_before_pixels=True).BitsAllocated in (8, 16)
        and _decodable(s.path) is not None
    }
    items = list(by_syntax.values())  # files sharing SOP UIDs leave few; unit tests do all
    assert len(items) >= 2
    for item in items:
        reference = _decodable(item.path)
        for syntax in (
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.201",
        ):
            accept = f"{DICOM}; transfer-syntax={syntax}"
            response = await http.get(
                f"{platform.url}/{item.url}", headers={**auth, "Accept": accept}
            )
            assert response.status_code == 200, (item.path.name, syntax, response.text)
            [(content_type, body)] = parse_multipart(response)
            assert content_type.endswith(syntax)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(body))
                assert ds.file_meta.TransferSyntaxUID == syntax
                np.testing.assert_array_equal(
                    ds.pixel_array, reference, err_msg=f"{item.path.name} {syntax}"
                )


async def test_ingest_precomputes_an_htj2k_copy_and_a_thumbnail(
    platform: Running, stored: list[Stored]
) -> None:
    item = next(s for s in stored if s.path.name == "CT_small.dcm")
    root = platform.platform.state_dir
    names = ("ts-1.2.840.10008.1.2.4.201.dcm", "thumbnail-v1.jpg")
    found: set[str] = set()
    for _ in range(300):
        found = {p.name for p in root.rglob(f"derived/*/*/{item.sop}/*") if p.name in names}
        if len(found) == 2:
            break
        await asyncio.sleep(0.1)
    assert found == set(names)


async def test_bulk_pixel_data_is_served_whole_and_by_range(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    auth = platform.producer(STRUCTURE)
    item = next(s for s in stored if s.path.name == "CT_small.dcm")
    metadata = await http.get(f"{platform.url}/{item.url}/metadata", headers=auth)
    uri = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = pydicom.dcmread(item.path).PixelData
    whole = await http.get(uri, headers={**auth, "Accept": "application/octet-stream"})
    assert whole.status_code == 200, whole.text
    assert whole.content == pixels
    part = await http.get(
        uri, headers={**auth, "Accept": "application/octet-stream", "Range": "bytes=100-199"}
    )
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(pixels)}"
    assert part.content == pixels[100:200]
    multipart = await http.get(uri, headers=auth)
    [(content_type, body)] = parse_multipart(multipart)
    assert content_type.startswith("application/octet-stream")
    assert body == pixels
    beyond = await http.get(
        uri, headers={**auth, "Accept": "application/octet-stream", "Range": "bytes=999999-"}
    )
    assert beyond.status_code == 416


async def test_rendered_series_is_each_instance_rendered(
    platform: Running, stored: list[Stored], http: httpx.AsyncClient
) -> None:
    item = next(s for s in stored if s.path.name == "CT_small.dcm")
    headers = {**platform.producer(STRUCTURE), "Accept": "image/jpeg"}
    response = await http.get(
        f"{platform.url}/studies/{item.study}/series/{item.series}/rendered", headers=headers
    )
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    assert parts
    assert all(t == "image/jpeg" and b[:2] == b"\xff\xd8" for t, b in parts)


async def test_a_retrieval_appears_in_the_patients_access_history(
    platform: Running, http: httpx.AsyncClient
) -> None:
    nir = "1850599123411"
    ins = nir + ins_key(nir)
    study = "1.2.826.0.1.3680043.8.498.770001"
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = study + ".1.1"
    ds.PatientID, ds.IssuerOfPatientID = ins, "INS-NIR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    producer = platform.producer(STRUCTURE)
    assert (await stow(http, platform.url, producer, [out.getvalue()])).status_code == 200
    await wait_for(http, platform.url, "studies", producer, 1, StudyInstanceUID=study)
    response = await http.get(f"{platform.url}/studies/{study}", headers=producer)
    assert response.status_code == 200
    patient = platform.headers("patient", "patient-wado", ins=ins)
    api = f"{platform.platform.base_url}/api/audit/me"
    events: list[dict[str, Any]] = []
    for _ in range(300):
        answer = await http.get(api, headers=patient, params={"type": "retrieve.instance"})
        if answer.status_code == 200 and (events := answer.json()):
            break
        await asyncio.sleep(0.2)
    assert events, "the retrieval never reached the patient's access history"
    event = events[0]["event"]
    assert event["type"] == "retrieve.instance"
    assert event["study_uids"] == [study]
    assert event["basis"] == "producing_structure"
    assert event["actor"]["structure"] == STRUCTURE
    # A professional of another structure tries to read it: 404, and the patient sees the refusal.
    outsider = platform.headers("professional", "810000000777", structure="640780417")
    refused = await http.get(f"{platform.url}/studies/{study}/metadata", headers=outsider)
    assert refused.status_code == 404
    denied: list[dict[str, Any]] = []
    for _ in range(300):
        answer = await http.get(api, headers=patient, params={"type": "access.denied"})
        if answer.status_code == 200 and (denied := answer.json()):
            break
        await asyncio.sleep(0.2)
    assert denied, "the refused read never reached the patient's access history"
    assert denied[0]["event"]["outcome"] == "denied"
    assert denied[0]["event"]["actor"]["sub"] == "810000000777"

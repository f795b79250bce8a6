"""QIDO-RS results → ``application/dicom+json`` (PS3.18 Annex F), without pydicom.

`ATTRIBUTES` is the one table of what the index can return: each DICOM attribute with its tag,
VR, information-model level and the SQL expression (over the aliases ``st`` studies, ``se``
series, ``i`` instances) that holds it. `qido_sql` selects those expressions *as the keyword*,
so a result row is already keyed by keyword and rendering is a loop of small formatters
encoded once by msgspec.

Which attributes a result carries (`return_keys`) follows PS3.18 §10.6.3.3: the level's
required attributes; the study's (and series') required attributes too when the search spans
studies (series); every matching key; ``includefield`` attributes at the level or above it
(lower-level ones are not returned); everything we hold at or above the level for
``includefield=all``. Attributes we do not hold are silently left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, time
from types import MappingProxyType
from typing import Any, Final, Protocol

import msgspec

from krypton.contracts.index.v1 import QidoLevelValues, QidoQuery

__all__ = [
    "ATTRIBUTES",
    "INSTANCE_REQUIRED",
    "SERIES_REQUIRED",
    "STUDY_REQUIRED",
    "Attribute",
    "Row",
    "render_results",
    "return_keys",
]

_STUDY = QidoLevelValues.STUDY
_SERIES = QidoLevelValues.SERIES
_INSTANCE = QidoLevelValues.INSTANCE
_DEPTH: Final = {_STUDY: 0, _SERIES: 1, _INSTANCE: 2}


class Row(Protocol):
    """A result row keyed by keyword (an ``asyncpg.Record`` or a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Attribute:
    """One returnable DICOM attribute and where the index keeps it.

    `expr` is None for computed attributes (InstanceAvailability, RetrieveURL).
    """

    keyword: str
    tag: str
    vr: str
    level: QidoLevelValues
    expr: str | None


_TABLE: Final = (
    # Study level (patient attributes are study attributes in the Study Root model).
    Attribute("SpecificCharacterSet", "00080005", "CS", _STUDY, "st.specific_character_set"),
    Attribute("StudyDate", "00080020", "DA", _STUDY, "st.study_date"),
    Attribute("StudyTime", "00080030", "TM", _STUDY, "st.study_time"),
    Attribute("AccessionNumber", "00080050", "SH", _STUDY, "st.accession_number"),
    Attribute("InstanceAvailability", "00080056", "CS", _STUDY, None),
    Attribute("ModalitiesInStudy", "00080061", "CS", _STUDY, "st.modalities"),
    Attribute("ReferringPhysicianName", "00080090", "PN", _STUDY, "st.referring_physician_name"),
    Attribute("TimezoneOffsetFromUTC", "00080201", "SH", _STUDY, "st.timezone_offset"),
    Attribute("RetrieveURL", "00081190", "UR", _STUDY, None),
    Attribute("StudyDescription", "00081030", "LO", _STUDY, "st.study_description"),
    Attribute("PatientName", "00100010", "PN", _STUDY, "st.patient_name"),
    Attribute("PatientID", "00100020", "LO", _STUDY, "st.patient_id"),
    Attribute("IssuerOfPatientID", "00100021", "LO", _STUDY, "st.issuer_of_patient_id"),
    Attribute("PatientBirthDate", "00100030", "DA", _STUDY, "st.patient_birth_date"),
    Attribute("PatientSex", "00100040", "CS", _STUDY, "st.patient_sex"),
    Attribute("StudyInstanceUID", "0020000D", "UI", _STUDY, "st.study_uid"),
    Attribute("StudyID", "00200010", "SH", _STUDY, "st.study_id"),
    Attribute("NumberOfStudyRelatedSeries", "00201206", "IS", _STUDY, "st.num_series"),
    Attribute("NumberOfStudyRelatedInstances", "00201208", "IS", _STUDY, "st.num_instances"),
    # Series level.
    Attribute("SeriesDate", "00080021", "DA", _SERIES, "se.series_date"),
    Attribute("SeriesTime", "00080031", "TM", _SERIES, "se.series_time"),
    Attribute("Modality", "00080060", "CS", _SERIES, "se.modality"),
    Attribute("Manufacturer", "00080070", "LO", _SERIES, "se.manufacturer"),
    Attribute("InstitutionName", "00080080", "LO", _SERIES, "se.institution_name"),
    Attribute("StationName", "00081010", "SH", _SERIES, "se.station_name"),
    Attribute("SeriesDescription", "0008103E", "LO", _SERIES, "se.series_description"),
    Attribute("BodyPartExamined", "00180015", "CS", _SERIES, "se.body_part_examined"),
    Attribute("SeriesInstanceUID", "0020000E", "UI", _SERIES, "se.series_uid"),
    Attribute("SeriesNumber", "00200011", "IS", _SERIES, "se.series_number"),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", "IS", _SERIES, "se.num_instances"),
    Attribute("PerformedProcedureStepStartDate", "00400244", "DA", _SERIES, "se.pps_start_date"),
    Attribute("PerformedProcedureStepStartTime", "00400245", "TM", _SERIES, "se.pps_start_time"),
    # Instance level.
    Attribute("SOPClassUID", "00080016", "UI", _INSTANCE, "i.sop_class_uid"),
    Attribute("SOPInstanceUID", "00080018", "UI", _INSTANCE, "i.sop_instance_uid"),
    Attribute("ContentDate", "00080023", "DA", _INSTANCE, "i.content_date"),
    Attribute("ContentTime", "00080033", "TM", _INSTANCE, "i.content_time"),
    Attribute("AvailableTransferSyntaxUID", "00083002", "UI", _INSTANCE, "i.transfer_syntax_uid"),
    Attribute("InstanceNumber", "00200013", "IS", _INSTANCE, "i.instance_number"),
    Attribute("PhotometricInterpretation", "00280004", "CS", _INSTANCE, "i.photometric_interpretation"),
    Attribute("NumberOfFrames", "00280008", "IS", _INSTANCE, "i.number_of_frames"),
    Attribute("Rows", "00280010", "US", _INSTANCE, "i.rows"),
    Attribute("Columns", "00280011", "US", _INSTANCE, "i.columns"),
    Attribute("BitsAllocated", "00280100", "US", _INSTANCE, "i.bits_allocated"),
)  # fmt: skip

#: Every attribute the index can return, by keyword.
ATTRIBUTES: Final[Mapping[str, Attribute]] = MappingProxyType({a.keyword: a for a in _TABLE})

#: PS3.18 Table 10.6.3-3 (study), -4 (series), -5 (instance), plus the parents' UIDs.
STUDY_REQUIRED: Final = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_REQUIRED: Final = (
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
    "RetrieveURL", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "StudyInstanceUID",
)  # fmt: skip
INSTANCE_REQUIRED: Final = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns",
    "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
)  # fmt: skip
_REQUIRED: Final = {_STUDY: STUDY_REQUIRED, _SERIES: SERIES_REQUIRED, _INSTANCE: INSTANCE_REQUIRED}


def return_keys(query: QidoQuery) -> list[str]:
    """Return the keywords each result of `query` carries, in tag order."""
    level = query.level
    depth = _DEPTH[level]
    keys: set[str] = set(_REQUIRED[level])
    if level is not _STUDY and query.study_uid is None:
        keys.update(STUDY_REQUIRED)
    if level is _INSTANCE and query.series_uid is None:
        keys.update(SERIES_REQUIRED)
    requested: Iterable[str] = [m.keyword for m in query.matches] + list(query.includefields)
    if query.include_all:
        requested = [*requested, *ATTRIBUTES]
    for keyword in requested:
        attribute = ATTRIBUTES.get(keyword)
        if attribute is not None and _DEPTH[attribute.level] <= depth:
            keys.add(keyword)
    return sorted(keys, key=lambda k: ATTRIBUTES[k].tag)


_encode = msgspec.json.Encoder().encode

#: Bytes of a result's constant attribute.
_ONLINE: Final = b'["ONLINE"]'


def _da(value: date) -> bytes:
    # isoformat always pads the year to four digits (strftime("%Y") does not on glibc).
    return b'["' + value.isoformat().replace("-", "").encode() + b'"]'


def _tm(value: time) -> bytes:
    # HH:MM:SS[.ffffff] -> HHMMSS[.ffffff]: the DICOM TM form, fraction only when present.
    return b'["' + value.isoformat().replace(":", "").encode() + b'"]'


def _pn(value: str) -> bytes:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return _encode([{k: v for k, v in groups.items() if v}])


def _multi(value: Sequence[str]) -> bytes:
    return _encode(list(value))


def _charset(value: str) -> bytes:
    return _encode(value.split("\\"))


def _scalar(value: Any) -> bytes:
    return _encode([value])


def _formatter(attribute: Attribute) -> Callable[[Any], bytes]:
    if attribute.keyword == "ModalitiesInStudy":
        return _multi
    if attribute.keyword == "SpecificCharacterSet":
        return _charset
    formatters: dict[str, Callable[[Any], bytes]] = {"DA": _da, "TM": _tm, "PN": _pn}
    return formatters.get(attribute.vr, _scalar)


_FORMATTERS: Final = {a.keyword: _formatter(a) for a in _TABLE}


def _retrieve_url(base_url: str, level: QidoLevelValues, row: Row) -> str:
    url = f"{base_url}/studies/{row['StudyInstanceUID']}"
    if level is not _STUDY:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is _INSTANCE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def render_results(query: QidoQuery, rows: Sequence[Row], *, base_url: str | None = None) -> bytes:
    """Encode result rows (keyed by keyword, as `qido_sql` selects them) as a DICOM JSON array.

    The JSON is assembled from bytes: per returned attribute, its ``"tag":{"vr":"..",`` head
    is made once per answer and only the value is encoded per row (about 10x faster than
    building a dict per element and encoding the whole: 100 studies in ~1 ms, the largest cost
    of a broad search before).

    Args:
        query: the query the rows answer (decides the returned attributes).
        rows: result rows; a null or empty value gives an element without ``Value``.
        base_url: DICOMweb root; without it RetrieveURL is left out.

    Returns:
        The UTF-8 ``application/dicom+json`` body.
    """
    keys = return_keys(query)
    base = base_url.rstrip("/") if base_url else None
    level = query.level
    # (keyword, element without a value, head of the element with one, value formatter)
    plan: list[tuple[str, bytes, bytes, Callable[[Any], bytes]]] = []
    for keyword in keys:
        if keyword == "RetrieveURL" and base is None:
            continue
        attribute = ATTRIBUTES[keyword]
        head = f'"{attribute.tag}":{{"vr":"{attribute.vr}"'.encode()
        plan.append((keyword, head + b"}", head + b',"Value":', _FORMATTERS[keyword]))
    items: list[bytes] = []
    for row in rows:
        parts: list[bytes] = []
        for keyword, empty, head, fmt in plan:
            if keyword == "InstanceAvailability":
                parts.append(head + _ONLINE + b"}")
            elif keyword == "RetrieveURL":
                parts.append(head + _encode([_retrieve_url(base or "", level, row)]) + b"}")
            else:
                value = row[keyword]
                if value is None or value == "" or (isinstance(value, list) and not value):
                    parts.append(empty)
                else:
                    parts.append(head + fmt(value) + b"}")
        items.append(b"{" + b",".join(parts) + b"}")
    return b"[" + b",".join(items) + b"]"

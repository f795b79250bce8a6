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


def _da(value: date) -> list[str]:
    return [value.strftime("%Y%m%d")]


def _tm(value: time) -> list[str]:
    text = value.strftime("%H%M%S")
    return [f"{text}.{value.microsecond:06d}" if value.microsecond else text]


def _pn(value: str) -> list[dict[str, str]]:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return [{k: v for k, v in groups.items() if v}]


def _multi(value: Sequence[str]) -> list[str]:
    return list(value)


def _charset(value: str) -> list[str]:
    return value.split("\\")


def _scalar(value: Any) -> list[Any]:
    return [value]


def _formatter(attribute: Attribute) -> Callable[[Any], list[Any]]:
    if attribute.keyword == "ModalitiesInStudy":
        return _multi
    if attribute.keyword == "SpecificCharacterSet":
        return _charset
    formatters: dict[str, Callable[[Any], list[Any]]] = {"DA": _da, "TM": _tm, "PN": _pn}
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

    Args:
        query: the query the rows answer (decides the returned attributes).
        rows: result rows; a null or empty value gives an element without ``Value``.
        base_url: DICOMweb root; without it RetrieveURL is left out.

    Returns:
        The UTF-8 ``application/dicom+json`` body.
    """
    keys = return_keys(query)
    base = base_url.rstrip("/") if base_url else None
    plan = [(k, ATTRIBUTES[k].tag, ATTRIBUTES[k].vr, _FORMATTERS[k]) for k in keys]
    results: list[dict[str, dict[str, Any]]] = []
    for row in rows:
        item: dict[str, dict[str, Any]] = {}
        for keyword, tag, vr, fmt in plan:
            if keyword == "InstanceAvailability":
                item[tag] = {"vr": vr, "Value": ["ONLINE"]}
            elif keyword == "RetrieveURL":
                if base is not None:
                    item[tag] = {"vr": vr, "Value": [_retrieve_url(base, query.level, row)]}
            else:
                value = row[keyword]
                if value is None or value == "" or (isinstance(value, list) and not value):
                    item[tag] = {"vr": vr}
                else:
                    item[tag] = {"vr": vr, "Value": fmt(value)}
        results.append(item)
    return msgspec.json.encode(results)

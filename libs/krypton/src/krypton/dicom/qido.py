r"""QIDO-RS query parameters → a validated `QidoQuery` (PS3.18 §8.3.4, PS3.4 C.2.2.2).

`parse_qido` turns the query string of ``/studies``, ``/series``, ``/instances`` (and their
study- or series-scoped forms) into the contract the index answers. It raises
``krypton.core.errors.ValidationError`` for anything it cannot honour, with a `reason` safe to
send back in a 400.

Rules applied (our conformance choices in *italics*):

- Attributes are named by keyword (``PatientName``) or by tag (``00100010``).
- A matching key must be valid at the search level: study keys everywhere, series keys at
  series and instance level, instance keys at instance level (see `MATCHING_KEYS`).
  *Sequence (dotted) matching keys are refused.*
- Single value matching; an empty value, or ``*`` alone, is universal matching (the attribute
  is returned, nothing is filtered).
- UID list matching for UI attributes: values separated by ``\`` or ``,``, or the key repeated.
  *The same list form is accepted for CS attributes (Modality, ModalitiesInStudy, PatientSex,
  BodyPartExamined): any value may match.* Any other key may appear once.
- Wildcards ``*`` and ``?`` for text VRs (PN, LO, SH, CS...), never for UI, DA, TM or IS.
- Range matching for DA and TM: ``a-b``, ``-b``, ``a-``; a TM end with fewer components
  covers the whole hour/minute it names. A DA must be ``YYYYMMDD``, a TM ``HH[MM[SS[.F{1,6}]]]``.
- ``includefield`` may repeat and may hold a comma-separated list, or ``all``; an unknown
  keyword is refused, a valid tag or keyword the index does not store is silently not returned.
- ``fuzzymatching`` is ``true`` or ``false``.
- ``limit`` and ``offset`` are non-negative integers; *a limit above `max_limit` is clamped to
  it (not refused), the absent limit is `default_limit`*.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date
from types import MappingProxyType
from typing import Final

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from krypton.contracts.index.v1 import Match, MatchKindValues, QidoLevelValues, QidoQuery
from krypton.core.errors import ValidationError

__all__ = [
    "INSTANCE_MATCHING_KEYS",
    "MATCHING_KEYS",
    "SERIES_MATCHING_KEYS",
    "STUDY_MATCHING_KEYS",
    "matching_keys",
    "parse_qido",
    "resolve_attribute",
]

#: Study-level matching keys (PS3.18 Table 10.6.1-5 plus patient attributes we index): keyword → VR.
STUDY_MATCHING_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "StudyDate": "DA",
        "StudyTime": "TM",
        "AccessionNumber": "SH",
        "ModalitiesInStudy": "CS",
        "ReferringPhysicianName": "PN",
        "PatientName": "PN",
        "PatientID": "LO",
        "IssuerOfPatientID": "LO",
        "PatientBirthDate": "DA",
        "PatientSex": "CS",
        "StudyInstanceUID": "UI",
        "StudyID": "SH",
        "StudyDescription": "LO",
    }
)

#: Series-level matching keys: keyword → VR.
SERIES_MATCHING_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Modality": "CS",
        "SeriesInstanceUID": "UI",
        "SeriesNumber": "IS",
        "SeriesDescription": "LO",
        "SeriesDate": "DA",
        "SeriesTime": "TM",
        "BodyPartExamined": "CS",
        "PerformedProcedureStepStartDate": "DA",
        "PerformedProcedureStepStartTime": "TM",
        "InstitutionName": "LO",
        "StationName": "SH",
        "Manufacturer": "LO",
    }
)

#: Instance-level matching keys: keyword → VR.
INSTANCE_MATCHING_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "SOPClassUID": "UI",
        "SOPInstanceUID": "UI",
        "InstanceNumber": "IS",
        "ContentDate": "DA",
        "ContentTime": "TM",
    }
)

#: Keys defined at each level (without the parents' keys).
MATCHING_KEYS: Final[Mapping[QidoLevelValues, Mapping[str, str]]] = MappingProxyType(
    {
        QidoLevelValues.STUDY: STUDY_MATCHING_KEYS,
        QidoLevelValues.SERIES: SERIES_MATCHING_KEYS,
        QidoLevelValues.INSTANCE: INSTANCE_MATCHING_KEYS,
    }
)

_PARENTS: Final = {
    QidoLevelValues.STUDY: (QidoLevelValues.STUDY,),
    QidoLevelValues.SERIES: (QidoLevelValues.STUDY, QidoLevelValues.SERIES),
    QidoLevelValues.INSTANCE: (
        QidoLevelValues.STUDY,
        QidoLevelValues.SERIES,
        QidoLevelValues.INSTANCE,
    ),
}

_WILDCARD_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_LIST_VRS: Final = frozenset({"UI", "CS"})
_RANGE_VRS: Final = frozenset({"DA", "TM"})

_TAG_RE: Final = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DA_RE: Final = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM_RE: Final = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_INT_RE: Final = re.compile(r"^[+-]?\d{1,10}$")

_MAX_VALUE_LENGTH: Final = 256
_MAX_LIST_LENGTH: Final = 1000


def matching_keys(level: QidoLevelValues) -> dict[str, str]:
    """Return every matching key (keyword → VR) valid for a search at `level`."""
    keys: dict[str, str] = {}
    for parent in _PARENTS[level]:
        keys.update(MATCHING_KEYS[parent])
    return keys


def resolve_attribute(attribute_id: str) -> str:
    """Return the keyword for a QIDO attribute ID (keyword or ``GGGGEEEE`` tag).

    A tag without a dictionary keyword (private, retired-unnamed) comes back as its upper-case
    8-hex form. Dotted sequence paths resolve component by component.

    Raises:
        ValidationError: not a DICOM keyword nor an 8-hex tag.
    """
    parts = attribute_id.split(".")
    resolved = []
    for part in parts:
        if _TAG_RE.match(part):
            keyword = keyword_for_tag(int(part, 16))
            resolved.append(keyword or part.upper())
        elif part and tag_for_keyword(part) is not None:
            resolved.append(part)
        else:
            msg = f"unknown attribute {attribute_id!r}: not a DICOM keyword nor an 8-hex tag"
            raise ValidationError(msg, field=attribute_id)
    return ".".join(resolved)


def parse_qido(
    level: QidoLevelValues | str,
    params: Iterable[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    max_limit: int = 1000,
    default_limit: int = 100,
) -> QidoQuery:
    """Validate QIDO-RS query parameters into a `QidoQuery`.

    Args:
        level: what the search returns (``study``, ``series``, ``instance``).
        params: the decoded query parameters in order, repeated keys kept.
        study_uid: Study Instance UID from the path (``/studies/{study}/...``).
        series_uid: Series Instance UID from the path (needs `study_uid`, instance level).
        max_limit: largest page the server returns; a larger ``limit`` is clamped.
        default_limit: page size when the request gives no ``limit``.

    Returns:
        The validated query.

    Raises:
        ValidationError: the request cannot be honoured; ``reason`` says why, ``field`` names
            the offending parameter.
    """
    try:
        qido_level = QidoLevelValues(level)
    except ValueError:
        msg = f"unknown search level {level!r}"
        raise ValidationError(msg, field="level") from None
    _check_path(qido_level, study_uid, series_uid)
    allowed = matching_keys(qido_level)

    raw: dict[str, list[str]] = {}
    includefields: list[str] = []
    include_all = False
    fuzzy = False
    limit = default_limit
    offset = 0
    for name, value in params:
        special = name.lower()
        if special == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    include_all = True
                    continue
                keyword = resolve_attribute(item)
                if keyword not in includefields:
                    includefields.append(keyword)
        elif special == "fuzzymatching":
            fuzzy = _parse_bool(value, "fuzzymatching")
        elif special == "limit":
            limit = min(_parse_count(value, "limit"), max_limit)
        elif special == "offset":
            offset = _parse_count(value, "offset")
        else:
            if "." in name:
                msg = f"sequence matching is not supported ({name!r})"
                raise ValidationError(msg, field=name)
            keyword = resolve_attribute(name)
            if keyword not in allowed:
                msg = f"{keyword} is not a matching key for a {qido_level.value} search"
                raise ValidationError(msg, field=name)
            if "\x00" in value:
                # PostgreSQL text cannot hold NUL: the index's query would fail and the caller
                # wait for a reply that never comes (issue 9, hostile input). No DICOM value
                # contains NUL, so it is a malformed request.
                msg = f"the value of {keyword} contains a NUL character"
                raise ValidationError(msg, field=name)
            if keyword in raw and allowed[keyword] != "UI":
                msg = f"{keyword} is given more than once"
                raise ValidationError(msg, field=name)
            raw.setdefault(keyword, []).append(value)

    matches = [_parse_match(keyword, allowed[keyword], values) for keyword, values in raw.items()]
    return QidoQuery(
        level=qido_level,
        study_uid=study_uid,
        series_uid=series_uid,
        matches=matches,
        includefields=includefields,
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
    )


def _check_path(level: QidoLevelValues, study_uid: str | None, series_uid: str | None) -> None:
    if series_uid is not None and (level is not QidoLevelValues.INSTANCE or study_uid is None):
        msg = "a series in the path needs a study and an instance search"
        raise ValidationError(msg, field="SeriesInstanceUID")
    if study_uid is not None and level is QidoLevelValues.STUDY:
        msg = "a study search cannot be scoped to a study"
        raise ValidationError(msg, field="StudyInstanceUID")
    for field, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if uid is not None:
            _check_uid(uid, field)


def _check_uid(uid: str, field: str) -> None:
    if len(uid) > 64 or not _UID_RE.match(uid):
        msg = f"not a valid UID: {uid[:70]!r}"
        raise ValidationError(msg, field=field)


def _parse_bool(value: str, field: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    msg = f"{field} must be true or false, not {value[:20]!r}"
    raise ValidationError(msg, field=field)


def _parse_count(value: str, field: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        msg = f"{field} must be a non-negative integer, not {value[:20]!r}"
        raise ValidationError(msg, field=field)
    return int(text)


def _parse_match(keyword: str, vr: str, values: list[str]) -> Match:
    if len(values) > 1:  # a repeated UI key is a UID list
        items = [v.strip() for value in values for v in re.split(r"[\\,]", value)]
        return _list_match(keyword, vr, items)
    value = values[0].strip()
    if len(value) > _MAX_VALUE_LENGTH and vr != "UI":
        msg = f"the value of {keyword} is too long"
        raise ValidationError(msg, field=keyword)
    if value in ("", "*"):
        return Match(keyword=keyword, kind=MatchKindValues.EMPTY, values=[])
    if vr in _LIST_VRS and ("\\" in value or (vr == "UI" and "," in value)):
        return _list_match(keyword, vr, re.split(r"[\\,]", value))
    if "\\" in value:
        msg = f"{keyword} takes a single value"
        raise ValidationError(msg, field=keyword)
    if vr == "UI":
        _check_uid(value, keyword)
        return Match(keyword=keyword, kind=MatchKindValues.SINGLE, values=[value])
    if vr in _RANGE_VRS:
        return _date_time_match(keyword, vr, value)
    if vr == "IS":
        if not _INT_RE.match(value):
            msg = f"{keyword} must be an integer, not {value[:20]!r}"
            raise ValidationError(msg, field=keyword)
        return Match(keyword=keyword, kind=MatchKindValues.SINGLE, values=[str(int(value))])
    if ("*" in value or "?" in value) and vr in _WILDCARD_VRS:
        return Match(keyword=keyword, kind=MatchKindValues.WILDCARD, values=[value])
    return Match(keyword=keyword, kind=MatchKindValues.SINGLE, values=[value])


def _list_match(keyword: str, vr: str, items: list[str]) -> Match:
    cleaned = list(dict.fromkeys(item.strip() for item in items))
    if not cleaned or any(not item for item in cleaned):
        msg = f"the list of {keyword} has an empty element"
        raise ValidationError(msg, field=keyword)
    if len(cleaned) > _MAX_LIST_LENGTH:
        msg = f"the list of {keyword} has more than {_MAX_LIST_LENGTH} values"
        raise ValidationError(msg, field=keyword)
    if vr == "UI":
        for uid in cleaned:
            _check_uid(uid, keyword)
    else:
        for item in cleaned:
            if "*" in item or "?" in item or len(item) > 16:
                msg = f"not a valid code in the list of {keyword}: {item[:20]!r}"
                raise ValidationError(msg, field=keyword)
    return Match(keyword=keyword, kind=MatchKindValues.LIST, values=cleaned)


def _date_time_match(keyword: str, vr: str, value: str) -> Match:
    if "*" in value or "?" in value:
        msg = f"wildcards are not allowed in {keyword} ({vr})"
        raise ValidationError(msg, field=keyword)
    check = _check_date if vr == "DA" else _check_time
    if "-" not in value:
        check(value, keyword)
        return Match(keyword=keyword, kind=MatchKindValues.SINGLE, values=[value])
    start, _, end = value.partition("-")
    start, end = start.strip(), end.strip()
    if not start and not end:
        msg = f"the range of {keyword} has no bound"
        raise ValidationError(msg, field=keyword)
    for bound in (start, end):
        if bound:
            check(bound, keyword)
    if start and end and _sortable(vr, start) > _sortable(vr, end, upper=True):
        msg = f"the range of {keyword} starts after it ends"
        raise ValidationError(msg, field=keyword)
    return Match(keyword=keyword, kind=MatchKindValues.RANGE, values=[start, end])


def _check_date(value: str, field: str) -> None:
    match = _DA_RE.match(value)
    try:
        if match is None:
            raise ValueError(value)
        date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        msg = f"{field} must be a date YYYYMMDD or a range of them, not {value[:20]!r}"
        raise ValidationError(msg, field=field) from None


def _check_time(value: str, field: str) -> None:
    match = _TM_RE.match(value)
    if match is None or int(match.group(1)) > 23 or int(match.group(2) or 0) > 59:
        msg = f"{field} must be a time HH[MM[SS[.FFFFFF]]] or a range of them, not {value[:20]!r}"
        raise ValidationError(msg, field=field)
    if int(match.group(3) or 0) > 60:  # 60 is a leap second, which TM allows
        msg = f"{field} has seconds out of range: {value[:20]!r}"
        raise ValidationError(msg, field=field)


def _sortable(vr: str, value: str, *, upper: bool = False) -> str:
    """Return a string that orders like the DA/TM value (TM padded to its covered bound)."""
    if vr == "DA":
        return value
    head, _, fraction = value.partition(".")
    filler = "9" if upper else "0"
    return head.ljust(6, filler) + fraction.ljust(6, filler)

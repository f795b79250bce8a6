"""parse_qido: QIDO-RS query parameters → QidoQuery, and every way a request is refused."""

from __future__ import annotations

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from krypton.contracts.index.v1 import Match, MatchKindValues, QidoLevelValues, QidoQuery
from krypton.core.errors import ValidationError
from krypton.dicom.qido import MATCHING_KEYS, matching_keys, parse_qido, resolve_attribute

SINGLE = MatchKindValues.SINGLE
WILDCARD = MatchKindValues.WILDCARD
LIST = MatchKindValues.LIST
RANGE = MatchKindValues.RANGE
EMPTY = MatchKindValues.EMPTY


def _one(level: str, name: str, value: str) -> Match:
    query = parse_qido(level, [(name, value)])
    assert len(query.matches) == 1
    return query.matches[0]


def test_an_empty_query_gives_the_defaults() -> None:
    query = parse_qido("study", [])
    assert query == QidoQuery(level=QidoLevelValues.STUDY, limit=100, offset=0)


def test_keyword_and_tag_name_the_same_attribute() -> None:
    by_keyword = _one("study", "PatientID", "IPP1")
    assert _one("study", "00100020", "IPP1") == by_keyword
    assert _one("study", "0020000d", "1.2.3").keyword == "StudyInstanceUID"
    assert by_keyword == Match(keyword="PatientID", kind=SINGLE, values=["IPP1"])


@pytest.mark.parametrize(
    ("level", "name", "value", "expected"),
    [
        ("study", "PatientName", "DUPONT^JEAN", Match(keyword="PatientName", kind=SINGLE, values=["DUPONT^JEAN"])),
        ("study", "PatientName", "dup*", Match(keyword="PatientName", kind=WILDCARD, values=["dup*"])),
        ("study", "AccessionNumber", "A?C1", Match(keyword="AccessionNumber", kind=WILDCARD, values=["A?C1"])),
        ("study", "PatientName", "", Match(keyword="PatientName", kind=EMPTY, values=[])),
        ("study", "PatientName", "*", Match(keyword="PatientName", kind=EMPTY, values=[])),
        ("study", "StudyDate", "20240101", Match(keyword="StudyDate", kind=SINGLE, values=["20240101"])),
        ("study", "StudyDate", "20240101-20240131", Match(keyword="StudyDate", kind=RANGE, values=["20240101", "20240131"])),
        ("study", "StudyDate", "-20240131", Match(keyword="StudyDate", kind=RANGE, values=["", "20240131"])),
        ("study", "StudyDate", "20240101-", Match(keyword="StudyDate", kind=RANGE, values=["20240101", ""])),
        ("study", "StudyTime", "0800-1200", Match(keyword="StudyTime", kind=RANGE, values=["0800", "1200"])),
        ("study", "StudyTime", "101530.123", Match(keyword="StudyTime", kind=SINGLE, values=["101530.123"])),
        ("study", "StudyInstanceUID", "1.2.3\\1.2.4", Match(keyword="StudyInstanceUID", kind=LIST, values=["1.2.3", "1.2.4"])),
        ("study", "StudyInstanceUID", "1.2.3,1.2.4,1.2.3", Match(keyword="StudyInstanceUID", kind=LIST, values=["1.2.3", "1.2.4"])),
        ("study", "ModalitiesInStudy", "CT\\MR", Match(keyword="ModalitiesInStudy", kind=LIST, values=["CT", "MR"])),
        ("study", "ModalitiesInStudy", "CT", Match(keyword="ModalitiesInStudy", kind=SINGLE, values=["CT"])),
        ("series", "SeriesNumber", "+7", Match(keyword="SeriesNumber", kind=SINGLE, values=["7"])),
        ("series", "Modality", "M?", Match(keyword="Modality", kind=WILDCARD, values=["M?"])),
        ("instance", "SOPClassUID", " 1.2.840.10008.5.1.4.1.1.2 ", Match(keyword="SOPClassUID", kind=SINGLE, values=["1.2.840.10008.5.1.4.1.1.2"])),
        ("instance", "PatientID", "IPP1", Match(keyword="PatientID", kind=SINGLE, values=["IPP1"])),
    ],
)  # fmt: skip
def test_each_matching_kind_is_recognised(
    level: str, name: str, value: str, expected: Match
) -> None:
    assert _one(level, name, value) == expected


def test_a_repeated_uid_key_is_a_uid_list() -> None:
    query = parse_qido("series", [("SeriesInstanceUID", "1.1"), ("SeriesInstanceUID", "1.2,1.3")])
    assert query.matches == [
        Match(keyword="SeriesInstanceUID", kind=LIST, values=["1.1", "1.2", "1.3"])
    ]


def test_includefield_repeats_splits_on_commas_and_knows_all() -> None:
    query = parse_qido(
        "study",
        [
            ("includefield", "StudyDescription,00081030"),
            ("includefield", "00091001"),
            ("includefield", "ReferencedSeriesSequence.SeriesInstanceUID"),
            ("includefield", "all"),
        ],
    )
    assert query.includefields == [
        "StudyDescription",
        "00091001",
        "ReferencedSeriesSequence.SeriesInstanceUID",
    ]
    assert query.include_all


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("FALSE", False), ("True", True)])
def test_fuzzymatching_is_a_boolean(raw: str, expected: bool) -> None:
    assert parse_qido("study", [("fuzzymatching", raw)]).fuzzy is expected


def test_limit_and_offset_are_read_and_limit_is_clamped() -> None:
    query = parse_qido("study", [("limit", "25"), ("offset", "50")])
    assert (query.limit, query.offset) == (25, 50)
    assert parse_qido("study", [("limit", "5000")], max_limit=1000).limit == 1000
    assert parse_qido("study", [], default_limit=7).limit == 7
    assert parse_qido("study", [("limit", "0")]).limit == 0


def test_path_uids_scope_the_query() -> None:
    query = parse_qido("instance", [], study_uid="1.2", series_uid="1.2.3")
    assert (query.study_uid, query.series_uid) == ("1.2", "1.2.3")
    assert parse_qido(QidoLevelValues.SERIES, [], study_uid="1.2").study_uid == "1.2"


@pytest.mark.parametrize(
    ("level", "params", "field", "reason"),
    [
        ("study", [("PatientNom", "x")], "PatientNom", "unknown attribute"),
        ("study", [("0010002", "x")], "0010002", "unknown attribute"),
        ("study", [("Modality", "CT")], "Modality", "not a matching key for a study search"),
        ("series", [("SOPClassUID", "1.2")], "SOPClassUID", "not a matching key for a series search"),
        ("study", [("Rows", "512")], "Rows", "not a matching key"),
        ("study", [("StudyDate", "2024-01-01")], "StudyDate", "YYYYMMDD"),
        ("study", [("StudyDate", "20240231")], "StudyDate", "YYYYMMDD"),
        ("study", [("StudyDate", "20240201-20240101")], "StudyDate", "starts after it ends"),
        ("study", [("StudyDate", "-")], "StudyDate", "no bound"),
        ("study", [("StudyDate", "2024*")], "StudyDate", "wildcards are not allowed"),
        ("study", [("StudyTime", "2500")], "StudyTime", "HH[MM[SS"),
        ("study", [("StudyTime", "1260")], "StudyTime", "HH[MM[SS"),
        ("study", [("StudyInstanceUID", "1.2.*")], "StudyInstanceUID", "not a valid UID"),
        ("study", [("StudyInstanceUID", "1.2.3,,1.2.4")], "StudyInstanceUID", "empty element"),
        ("study", [("StudyInstanceUID", "abc")], "StudyInstanceUID", "not a valid UID"),
        ("study", [("PatientID", "a"), ("PatientID", "b")], "PatientID", "more than once"),
        ("study", [("PatientID", "a\\b")], "PatientID", "single value"),
        ("study", [("ModalitiesInStudy", "CT\\M*")], "ModalitiesInStudy", "not a valid code"),
        ("series", [("SeriesNumber", "one")], "SeriesNumber", "must be an integer"),
        ("series", [("SeriesNumber", "1*")], "SeriesNumber", "must be an integer"),
        ("study", [("RequestAttributeSequence.ScheduledProcedureStepID", "1")], "RequestAttributeSequence.ScheduledProcedureStepID", "sequence matching"),
        ("study", [("includefield", "NotAKeyword")], "NotAKeyword", "unknown attribute"),
        ("study", [("fuzzymatching", "yes")], "fuzzymatching", "true or false"),
        ("study", [("limit", "-1")], "limit", "non-negative integer"),
        ("study", [("limit", "ten")], "limit", "non-negative integer"),
        ("study", [("offset", "1.5")], "offset", "non-negative integer"),
        ("study", [("PatientName", "x" * 300)], "PatientName", "too long"),
    ],
)  # fmt: skip
def test_a_bad_request_is_refused_with_a_clear_reason(
    level: str, params: list[tuple[str, str]], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_qido(level, params)
    assert reason in caught.value.reason
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("level", "study_uid", "series_uid", "reason"),
    [
        ("study", "1.2", None, "cannot be scoped to a study"),
        ("series", "1.2", "1.2.3", "needs a study and an instance search"),
        ("instance", None, "1.2.3", "needs a study and an instance search"),
        ("series", "1.2.x", None, "not a valid UID"),
        ("instance", "1.2", "9" * 65, "not a valid UID"),
    ],
)
def test_a_bad_path_is_refused(
    level: str, study_uid: str | None, series_uid: str | None, reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        parse_qido(level, [], study_uid=study_uid, series_uid=series_uid)


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown search level"):
        parse_qido("patient", [])


def test_lower_levels_accept_the_keys_of_their_parents() -> None:
    study = set(matching_keys(QidoLevelValues.STUDY))
    series = set(matching_keys(QidoLevelValues.SERIES))
    instance = set(matching_keys(QidoLevelValues.INSTANCE))
    assert study < series < instance
    assert {"PatientID", "Modality", "SOPInstanceUID"} <= instance


@pytest.mark.parametrize("level", list(QidoLevelValues))
def test_matching_keys_agree_with_the_dicom_dictionary(level: QidoLevelValues) -> None:
    for keyword, vr in MATCHING_KEYS[level].items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        assert dictionary_VR(tag) == vr, keyword


def test_resolve_attribute_keeps_unnamed_tags_in_upper_case() -> None:
    assert resolve_attribute("0009abcd") == "0009ABCD"
    assert resolve_attribute("00100010") == "PatientName"

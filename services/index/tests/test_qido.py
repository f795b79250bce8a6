"""run_qido against the real PostgreSQL: matching at every level, rendering, paging, access."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import (
    Match,
    MatchKindValues,
    QidoLevelValues,
    QidoQuery,
    QidoRequest,
    QidoResponse,
)
from krypton.contracts.ingest.v1 import InstanceStored
from krypton.dicom.qido import MATCHING_KEYS, parse_qido
from krypton.index.qido_sql import access_predicate, build_qido_sql, run_qido
from krypton.index.render import ATTRIBUTES
from krypton.index.store import upsert_batch

pytestmark = pytest.mark.postgres

MakeEvent = Callable[..., InstanceStored]

A, B = "330000001", "330000002"
INS_1 = "111111111111111"
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="test")
PRO_A = Actor(sub="dr-a", role=RoleValues.PROFESSIONAL, issuer="test", structure=A)
PRODUCER_B = Actor(sub="ris-b", role=RoleValues.PRODUCER, issuer="test", structure=B)
PATIENT_1 = Actor(sub="p1", role=RoleValues.PATIENT, issuer="test", ins=INS_1)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_DOC = "1.2.840.10008.5.1.4.1.1.88.22"

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"

# Study UIDs in the default order: date desc (nulls last), time desc, UID.
ALL_STUDIES = ["1.2", "1.5", "1.1", "1.3", "1.4"]


@pytest.fixture
async def dataset(index_pool: asyncpg.Pool, make_event: MakeEvent) -> asyncpg.Pool:
    """Five studies in two structures (see ALL_STUDIES for their order)."""

    def study(uid: str, structure: str, patient_id: str, **attrs: Any) -> dict[str, Any]:
        return {"study_uid": uid, "structure": structure, "patient_id": patient_id} | {
            f"study_{k}": v for k, v in attrs.items()
        }

    s1 = study("1.1", A, "IPP1", patient_name="DUPONT^JEAN", patient_birth_date="19700101",
               patient_sex="M", study_date="20240110", study_time="083000",
               accession_number="ACC1", study_id="S1", study_description="Thorax",
               referring_physician_name="Martin^Paul", timezone_offset="+0100",
               specific_character_set="ISO_IR 100")  # fmt: skip
    s2 = study("1.2", A, "IPP2", patient_name="LEFÈVRE^Hélène", patient_birth_date="19851231",
               patient_sex="F", study_date="20240115", study_time="140000",
               accession_number="ACC2")  # fmt: skip
    s3 = study("1.3", B, "IPP3", patient_name="HELENE^DURAND", study_date="20231201",
               study_time="090000", accession_number="ACC3")  # fmt: skip
    s4 = study("1.4", B, "IPP1", patient_name="Dupond^Marie")
    s5 = study("1.5", A, "IPPX", patient_name="DUPONT^JEAN", study_date="20240110",
               study_time="100000", accession_number="ACC5")  # fmt: skip
    events = []

    def add(s: dict[str, Any], series_uid: str, modality: str, number: int, count: int,
            sop_class: str = CT_IMAGE, **series: Any) -> None:  # fmt: skip
        for n in range(1, count + 1):
            ins = INS_1 if s["study_uid"] in ("1.1", "1.5") else None
            events.append(
                make_event(
                    **s, ins=ins, series_uid=series_uid, sop_uid=f"{series_uid}.{n}",
                    series_modality=modality, series_series_number=number,
                    instance_instance_number=count + 1 - n, instance_sop_class_uid=sop_class,
                    instance_rows=512, instance_columns=512, instance_bits_allocated=16,
                    **{f"series_{k}": v for k, v in series.items()},
                )
            )  # fmt: skip

    add(s1, "1.1.1", "CT", 1, 3, body_part_examined="CHEST",
        performed_procedure_step_start_date="20240110")  # fmt: skip
    add(s1, "1.1.2", "SR", 2, 1, sop_class=SR_DOC)
    add(s2, "1.2.1", "MR", 1, 2)
    add(s3, "1.3.1", "CT", 1, 1)
    add(s3, "1.3.2", "PT", 2, 1)
    add(s4, "1.4.1", "US", 1, 1)
    add(s5, "1.5.1", "CT", 1, 1)
    assert await upsert_batch(index_pool, events) == 10
    return index_pool


async def _ask(
    pool: asyncpg.Pool,
    level: str,
    params: list[tuple[str, str]] | None = None,
    *,
    actor: Actor = ADMIN,
    study_uid: str | None = None,
    series_uid: str | None = None,
    base_url: str | None = None,
) -> QidoResponse:
    query = parse_qido(level, params or [], study_uid=study_uid, series_uid=series_uid)
    response = await run_qido(pool, QidoRequest(query=query, actor=actor, base_url=base_url))
    assert response.status == 200, response.reason
    return response


async def _results(
    pool: asyncpg.Pool, level: str, *args: Any, **kwargs: Any
) -> list[dict[str, Any]]:
    response = await _ask(pool, level, *args, **kwargs)
    results: list[dict[str, Any]] = msgspec.json.decode(response.body)
    assert response.count == len(results)
    return results


def _values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r[tag] else None for r in results]


async def _uids(pool: asyncpg.Pool, level: str, *args: Any, **kwargs: Any) -> list[str]:
    tag = {"study": STUDY_UID, "series": SERIES_UID, "instance": SOP_UID}[level]
    return _values(await _results(pool, level, *args, **kwargs), tag)


# --- study level -------------------------------------------------------------------------


async def test_studies_come_newest_first_with_undated_ones_last(dataset: asyncpg.Pool) -> None:
    assert await _uids(dataset, "study") == ALL_STUDIES


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("PatientID", "IPP1")], ["1.1", "1.4"]),
        ([("00100020", "IPP2")], ["1.2"]),
        ([("AccessionNumber", "ACC2")], ["1.2"]),
        ([("AccessionNumber", "ACC*")], ["1.2", "1.5", "1.1", "1.3"]),
        ([("AccessionNumber", "AC?5")], ["1.5"]),
        ([("AccessionNumber", "acc2")], []),
        ([("StudyID", "S1")], ["1.1"]),
        ([("StudyDescription", "Thorax")], ["1.1"]),
        ([("StudyInstanceUID", "1.3")], ["1.3"]),
        ([("StudyInstanceUID", "1.1,1.3\\1.9")], ["1.1", "1.3"]),
        ([("StudyInstanceUID", "1.1"), ("StudyInstanceUID", "1.4")], ["1.1", "1.4"]),
        ([("StudyDate", "20240110")], ["1.5", "1.1"]),
        ([("StudyDate", "20240101-20240131")], ["1.2", "1.5", "1.1"]),
        ([("StudyDate", "-20231231")], ["1.3"]),
        ([("StudyDate", "20240111-")], ["1.2"]),
        ([("StudyTime", "0800-0900")], ["1.1", "1.3"]),
        ([("StudyTime", "14")], ["1.2"]),
        ([("StudyTime", "-0830")], ["1.1"]),
        ([("StudyDate", "20240110"), ("StudyTime", "09-")], ["1.5"]),
        ([("ModalitiesInStudy", "CT")], ["1.5", "1.1", "1.3"]),
        ([("ModalitiesInStudy", "SR")], ["1.1"]),
        ([("ModalitiesInStudy", "US\\MR")], ["1.2", "1.4"]),
        ([("ModalitiesInStudy", "P*")], ["1.3"]),
        ([("PatientSex", "F")], ["1.2"]),
        ([("PatientSex", "F\\M")], ["1.2", "1.1"]),
        ([("PatientBirthDate", "19800101-")], ["1.2"]),
        ([("IssuerOfPatientID", B)], ["1.3", "1.4"]),
        ([("ReferringPhysicianName", "MARTIN^PAUL")], ["1.1"]),
        ([("PatientID", "IPP1"), ("ModalitiesInStudy", "US")], ["1.4"]),
        ([("StudyDescription", "")], ALL_STUDIES),
    ],
)
async def test_study_matching(
    dataset: asyncpg.Pool, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await _uids(dataset, "study", params) == expected


@pytest.mark.parametrize(
    ("value", "fuzzy", "expected"),
    [
        ("dupont^jean", False, ["1.5", "1.1"]),
        ("DUPONT^JEAN", False, ["1.5", "1.1"]),
        ("lefevre^helene", False, ["1.2"]),
        ("LEFÈVRE^HÉLÈNE", False, ["1.2"]),
        ("dupont", False, []),
        ("DUP*", False, ["1.5", "1.1", "1.4"]),
        ("dupon?^*", False, ["1.5", "1.1", "1.4"]),
        ("dupon?^j*", False, ["1.5", "1.1"]),
        ("*^hél*", False, ["1.2"]),
        ("hélène", True, ["1.2", "1.3"]),
        ("HELENE", True, ["1.2", "1.3"]),
        ("dup", True, ["1.5", "1.1", "1.4"]),
        ("jean", True, ["1.5", "1.1"]),
        ("jean dup", True, ["1.5", "1.1"]),
        ("marie^dupond", True, ["1.4"]),
        ("ene", True, []),
        ("dup*", True, ["1.5", "1.1", "1.4"]),
        ("d", True, ["1.5", "1.1", "1.3", "1.4"]),
        ("d^jean", True, ["1.5", "1.1"]),
        ("jeanjeanjeanjean", True, []),
        ("ma dupo", True, ["1.4"]),
    ],
)
async def test_person_names_match_without_case_or_accents(
    dataset: asyncpg.Pool, value: str, fuzzy: bool, expected: list[str]
) -> None:
    params = [("PatientName", value), ("fuzzymatching", "true" if fuzzy else "false")]
    assert await _uids(dataset, "study", params) == expected


async def test_fuzzy_matching_applies_to_the_referring_physician_too(
    dataset: asyncpg.Pool,
) -> None:
    params = [("ReferringPhysicianName", "pau"), ("fuzzymatching", "true")]
    assert await _uids(dataset, "study", params) == ["1.1"]


# --- series and instance levels ----------------------------------------------------------


async def test_series_of_a_study_come_by_series_number(dataset: asyncpg.Pool) -> None:
    assert await _uids(dataset, "series", study_uid="1.1") == ["1.1.1", "1.1.2"]


@pytest.mark.parametrize(
    ("params", "study_uid", "expected"),
    [
        ([("Modality", "SR")], "1.1", ["1.1.2"]),
        ([("SeriesNumber", "2")], "1.1", ["1.1.2"]),
        ([("SeriesInstanceUID", "1.1.1\\1.3.1")], None, ["1.1.1", "1.3.1"]),
        ([("Modality", "CT")], None, ["1.5.1", "1.1.1", "1.3.1"]),
        ([("Modality", "CT\\PT")], None, ["1.5.1", "1.1.1", "1.3.1", "1.3.2"]),
        ([("BodyPartExamined", "CHEST")], None, ["1.1.1"]),
        ([("PerformedProcedureStepStartDate", "20240101-")], None, ["1.1.1"]),
        ([("PatientID", "IPP1")], None, ["1.1.1", "1.1.2", "1.4.1"]),
        ([("PatientName", "hélène"), ("fuzzymatching", "true")], None, ["1.2.1", "1.3.1", "1.3.2"]),
        ([("Modality", "CT")], "1.3", ["1.3.1"]),
        ([], "9.9", []),
    ],
)  # fmt: skip
async def test_series_matching(
    dataset: asyncpg.Pool,
    params: list[tuple[str, str]],
    study_uid: str | None,
    expected: list[str],
) -> None:
    assert await _uids(dataset, "series", params, study_uid=study_uid) == expected


async def test_instances_of_a_series_come_by_instance_number(dataset: asyncpg.Pool) -> None:
    results = await _results(dataset, "instance", study_uid="1.1", series_uid="1.1.1")
    assert _values(results, SOP_UID) == ["1.1.1.3", "1.1.1.2", "1.1.1.1"]
    assert _values(results, "00200013") == [1, 2, 3]


@pytest.mark.parametrize(
    ("params", "study_uid", "series_uid", "expected"),
    [
        ([], "1.1", None, ["1.1.1.3", "1.1.1.2", "1.1.1.1", "1.1.2.1"]),
        ([("InstanceNumber", "2")], "1.1", "1.1.1", ["1.1.1.2"]),
        ([("SOPClassUID", SR_DOC)], None, None, ["1.1.2.1"]),
        ([("SOPInstanceUID", "1.2.1.1,1.3.1.1")], None, None, ["1.2.1.1", "1.3.1.1"]),
        ([("Modality", "MR")], None, None, ["1.2.1.2", "1.2.1.1"]),
        ([("PatientID", "IPP2")], None, None, ["1.2.1.2", "1.2.1.1"]),
        ([("StudyDate", "-20231231")], None, None, ["1.3.1.1", "1.3.2.1"]),
        ([], "1.1", "1.2.1", []),
    ],
)
async def test_instance_matching(
    dataset: asyncpg.Pool,
    params: list[tuple[str, str]],
    study_uid: str | None,
    series_uid: str | None,
    expected: list[str],
) -> None:
    uids = await _uids(dataset, "instance", params, study_uid=study_uid, series_uid=series_uid)
    assert uids == expected


# --- rendering -----------------------------------------------------------------------------


async def test_a_study_result_is_dicom_json_with_the_required_attributes(
    dataset: asyncpg.Pool,
) -> None:
    results = await _results(
        dataset, "study", [("StudyInstanceUID", "1.1")], base_url="https://h/dicomweb/"
    )
    assert len(results) == 1
    result = results[0]
    assert list(result) == sorted(result)  # tags in ascending order
    assert result == {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
        "00080020": {"vr": "DA", "Value": ["20240110"]},
        "00080030": {"vr": "TM", "Value": ["083000"]},
        "00080050": {"vr": "SH", "Value": ["ACC1"]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Martin^Paul"}]},
        "00080201": {"vr": "SH", "Value": ["+0100"]},
        "00081190": {"vr": "UR", "Value": ["https://h/dicomweb/studies/1.1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DUPONT^JEAN"}]},
        "00100020": {"vr": "LO", "Value": ["IPP1"]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "0020000D": {"vr": "UI", "Value": ["1.1"]},
        "00200010": {"vr": "SH", "Value": ["S1"]},
        "00201206": {"vr": "IS", "Value": [2]},
        "00201208": {"vr": "IS", "Value": [4]},
    }


async def test_unknown_values_are_elements_without_value(dataset: asyncpg.Pool) -> None:
    (result,) = await _results(dataset, "study", [("StudyInstanceUID", "1.4")])
    assert result["00080020"] == {"vr": "DA"}
    assert result["00080050"] == {"vr": "SH"}
    assert "00081190" not in result  # no base URL, no RetrieveURL


async def test_series_and_instance_results_carry_parent_uids_and_retrieve_urls(
    dataset: asyncpg.Pool,
) -> None:
    (series,) = await _results(
        dataset, "series", [("Modality", "SR")], study_uid="1.1", base_url="http://x"
    )
    assert series[STUDY_UID]["Value"] == ["1.1"]
    assert series["00201209"] == {"vr": "IS", "Value": [1]}
    assert series["00081190"]["Value"] == ["http://x/studies/1.1/series/1.1.2"]
    assert "00100010" not in series  # study-scoped: no study attributes unless asked
    (instance,) = await _results(
        dataset, "instance", [("InstanceNumber", "1")], study_uid="1.1", series_uid="1.1.1",
        base_url="http://x",
    )  # fmt: skip
    assert instance[STUDY_UID]["Value"] == ["1.1"]
    assert instance[SERIES_UID]["Value"] == ["1.1.1"]
    assert instance["00080016"]["Value"] == [CT_IMAGE]
    assert instance["00280010"] == {"vr": "US", "Value": [512]}
    assert instance["00080056"]["Value"] == ["ONLINE"]
    assert instance["00081190"]["Value"] == ["http://x/studies/1.1/series/1.1.1/instances/1.1.1.3"]
    assert "00080060" not in instance  # series-scoped: no series attributes unless asked


async def test_searches_across_studies_return_study_attributes(dataset: asyncpg.Pool) -> None:
    (series,) = await _results(dataset, "series", [("SeriesInstanceUID", "1.2.1")])
    assert series["00100010"]["Value"] == [{"Alphabetic": "LEFÈVRE^Hélène"}]
    assert series["00080061"]["Value"] == ["MR"]
    (instance,) = await _results(dataset, "instance", [("SOPInstanceUID", "1.4.1.1")])
    assert instance["00100020"]["Value"] == ["IPP1"]
    assert instance["00080060"]["Value"] == ["US"]  # and series attributes


async def test_includefield_adds_attributes_at_or_above_the_level_only(
    dataset: asyncpg.Pool,
) -> None:
    params = [("StudyInstanceUID", "1.1"), ("includefield", "StudyDescription,Modality,00091001")]
    (study,) = await _results(dataset, "study", params)
    assert study["00081030"] == {"vr": "LO", "Value": ["Thorax"]}
    assert "00080060" not in study  # Modality is a series attribute
    assert "00091001" not in study  # valid tag the index does not hold: silently left out
    (series,) = await _results(
        dataset, "series", [("includefield", "PatientName,BodyPartExamined")], study_uid="1.4"
    )
    assert series["00100010"]["Value"] == [{"Alphabetic": "Dupond^Marie"}]
    assert series["00180015"] == {"vr": "CS"}


async def test_includefield_all_returns_everything_held_at_or_above_the_level(
    dataset: asyncpg.Pool,
) -> None:
    (series,) = await _results(
        dataset, "series", [("includefield", "all"), ("Modality", "CT")], study_uid="1.1",
        base_url="http://x",
    )  # fmt: skip
    expected = {a.tag for a in ATTRIBUTES.values() if a.level is not QidoLevelValues.INSTANCE}
    assert set(series) == expected
    assert series["00180015"]["Value"] == ["CHEST"]


async def test_matching_keys_are_returned(dataset: asyncpg.Pool) -> None:
    (study,) = await _results(dataset, "study", [("StudyDescription", "Thorax")])
    assert study["00081030"]["Value"] == ["Thorax"]


# --- paging ----------------------------------------------------------------------------


async def test_pages_are_stable_and_never_repeat(dataset: asyncpg.Pool) -> None:
    seen = []
    flags = []
    for offset in range(0, 6, 2):
        response = await _ask(dataset, "study", [("limit", "2"), ("offset", str(offset))])
        seen += _values(msgspec.json.decode(response.body), STUDY_UID)
        flags.append(response.has_more)
    assert seen == ALL_STUDIES
    assert flags == [True, True, False]
    instances = []
    for offset in range(0, 10, 3):
        instances += await _uids(dataset, "instance", [("limit", "3"), ("offset", str(offset))])
    assert len(instances) == len(set(instances)) == 10


async def test_a_page_past_the_end_is_empty(dataset: asyncpg.Pool) -> None:
    response = await _ask(dataset, "study", [("offset", "50")])
    assert (response.body, response.count, response.has_more) == (b"[]", 0, False)


# --- access ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "expected"),
    [
        (ADMIN, ALL_STUDIES),
        (PRO_A, ["1.2", "1.5", "1.1"]),
        (PRODUCER_B, ["1.3", "1.4"]),
        (PATIENT_1, ["1.5", "1.1"]),
        (Actor(sub="p", role=RoleValues.PATIENT, issuer="t"), []),
        (Actor(sub="x", role=RoleValues.PROFESSIONAL, issuer="t"), []),
        (Actor(sub="x", role=RoleValues.PRODUCER, issuer="t", structure="999999999"), []),
    ],
    ids=["admin", "professional-A", "producer-B", "patient", "patient-without-ins",
         "professional-without-structure", "other-structure"],
)  # fmt: skip
async def test_each_actor_sees_only_what_the_access_rule_allows(
    dataset: asyncpg.Pool, actor: Actor, expected: list[str]
) -> None:
    assert await _uids(dataset, "study", actor=actor) == expected


async def test_another_structures_study_looks_like_a_missing_one(dataset: asyncpg.Pool) -> None:
    assert await _uids(dataset, "series", study_uid="1.3", actor=PRO_A) == []
    assert await _uids(dataset, "series", study_uid="9.9", actor=PRO_A) == []
    assert await _uids(dataset, "instance", study_uid="1.3", actor=PRO_A) == []
    assert await _uids(dataset, "instance", study_uid="1.3", series_uid="1.3.1", actor=PRO_A) == []
    assert await _uids(dataset, "study", [("PatientID", "IPP3")], actor=PRO_A) == []


async def test_cross_study_searches_only_cover_visible_studies(dataset: asyncpg.Pool) -> None:
    assert await _uids(dataset, "series", [("Modality", "CT")], actor=PRODUCER_B) == ["1.3.1"]
    instances = await _uids(dataset, "instance", actor=PATIENT_1)
    assert {uid.rsplit(".", 2)[0] for uid in instances} == {"1.1", "1.5"}


def test_the_access_predicate_binds_values_and_never_inlines_them() -> None:
    evil = Actor(sub="x", role=RoleValues.PRODUCER, issuer="t", structure="A' OR '1'='1")
    sql, params = access_predicate(evil, "st")
    assert (sql, params) == ("st.structure = $1", ["A' OR '1'='1"])
    request = QidoRequest(query=parse_qido("study", [("PatientID", "x' OR 1=1 --")]), actor=evil)
    sql, params = build_qido_sql(request)
    assert "OR 1=1" not in sql
    assert params[:2] == ["A' OR '1'='1", "x' OR 1=1 --"]


# --- requests the index refuses ----------------------------------------------------------


@pytest.mark.parametrize(
    "match",
    [
        Match(keyword="Modality", kind=MatchKindValues.SINGLE, values=["CT"]),
        Match(keyword="StudyDate", kind=MatchKindValues.WILDCARD, values=["2024*"]),
        Match(keyword="NotAnAttribute", kind=MatchKindValues.SINGLE, values=["x"]),
        Match(keyword="PatientID", kind=MatchKindValues.SINGLE, values=[]),
        Match(keyword="StudyTime", kind=MatchKindValues.RANGE, values=["25", ""]),
        Match(keyword="StudyInstanceUID", kind=MatchKindValues.WILDCARD, values=["1.*"]),
    ],
)
async def test_a_query_the_parser_would_have_refused_gives_400(
    index_pool: asyncpg.Pool, match: Match
) -> None:
    query = QidoQuery(level=QidoLevelValues.STUDY, matches=[match])
    response = await run_qido(index_pool, QidoRequest(query=query, actor=ADMIN))
    assert response.status == 400
    assert response.reason


def test_a_limit_beyond_the_index_maximum_is_clamped() -> None:
    query = QidoQuery(level=QidoLevelValues.STUDY, limit=10**9, offset=0)
    _, params = build_qido_sql(QidoRequest(query=query, actor=ADMIN))
    assert params[-2:] == [5001, 0]


# --- the attribute table ------------------------------------------------------------------


def test_every_matching_key_has_a_column_of_its_level() -> None:
    for level, keys in MATCHING_KEYS.items():
        for keyword, vr in keys.items():
            attribute = ATTRIBUTES[keyword]
            assert attribute.expr is not None, keyword
            assert attribute.vr == vr, keyword
            assert attribute.level is level, keyword


def test_the_attribute_table_agrees_with_the_dicom_dictionary() -> None:
    for keyword, attribute in ATTRIBUTES.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        assert f"{tag:08X}" == attribute.tag, keyword
        assert dictionary_VR(tag) == attribute.vr, keyword

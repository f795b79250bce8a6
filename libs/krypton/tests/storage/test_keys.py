"""The key layout and its validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from krypton.storage.errors import InvalidKey
from krypton.storage.keys import (
    derived_key,
    derived_prefix,
    instance_key,
    quarantine_key,
    staging_key,
    study_prefix,
    validate_key,
    validate_prefix,
)

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
SERIES = "1.2.840.113619.2.55.3.604688119.969.1268071029.321"
SOP = "1.2.840.113619.2.55.3.604688119.969.1268071029.322"


def test_staging_and_quarantine_keys_are_split_by_utc_day() -> None:
    # 00:30 in Paris (UTC+2) is still the previous day in UTC.
    at = datetime(2024, 7, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))

    assert staging_key("up-1_A", at=at) == "staging/2024/06/30/up-1_A"
    assert quarantine_key("up-1_A", at=at) == "quarantine/2024/06/30/up-1_A"


def test_staging_key_defaults_to_today() -> None:
    today = datetime.now(UTC)

    key = staging_key("abc")

    assert key.startswith("staging/")
    assert key.endswith("/abc")
    assert key[len("staging/") : -len("/abc")] in {
        f"{today:%Y/%m/%d}",
        f"{today + timedelta(days=1):%Y/%m/%d}",
    }


def test_instance_key_nests_study_series_and_sop() -> None:
    assert instance_key(STUDY, SERIES, SOP) == f"dicom/{STUDY}/{SERIES}/{SOP}.dcm"
    assert instance_key(STUDY, SERIES, SOP).startswith(study_prefix(STUDY))


def test_derived_key_sits_beside_its_instance() -> None:
    key = derived_key("thumbnail-256", STUDY, SERIES, SOP, "jpg")

    assert key == f"derived/{STUDY}/{SERIES}/{SOP}/thumbnail-256.jpg"
    assert key.startswith(derived_prefix(STUDY))
    assert (
        derived_key("ts-1.2.840.10008.1.2.4.50", STUDY, SERIES, SOP, "dcm")
        == f"derived/{STUDY}/{SERIES}/{SOP}/ts-1.2.840.10008.1.2.4.50.dcm"
    )


@pytest.mark.parametrize(
    "uid",
    ["", "1..2", ".1.2", "1.2.", "1.2/3", "../1", "1.2a", "1" * 65, "1.2\x00", " 1.2"],
    ids=repr,
)
def test_malformed_uids_are_refused(uid: str) -> None:
    with pytest.raises(InvalidKey):
        instance_key(uid, SERIES, SOP)
    with pytest.raises(InvalidKey):
        instance_key(STUDY, uid, SOP)
    with pytest.raises(InvalidKey):
        instance_key(STUDY, SERIES, uid)
    with pytest.raises(InvalidKey):
        derived_key("thumb", uid, SERIES, SOP, "jpg")
    with pytest.raises(InvalidKey):
        study_prefix(uid)


def test_a_uid_of_64_characters_is_accepted() -> None:
    uid = "1." + "2" * 62
    assert instance_key(uid, uid, uid).count(uid) == 3


@pytest.mark.parametrize("upload_id", ["", "a/b", "..", "a.b", "a b", "x" * 129, "é"], ids=repr)
def test_malformed_upload_ids_are_refused(upload_id: str) -> None:
    with pytest.raises(InvalidKey):
        staging_key(upload_id)
    with pytest.raises(InvalidKey):
        quarantine_key(upload_id)


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [("", "jpg"), ("a/b", "jpg"), ("..", "jpg"), ("x", ""), ("x", "../a"), ("x", ".jpg")],
)
def test_malformed_derived_parts_are_refused(kind: str, suffix: str) -> None:
    with pytest.raises(InvalidKey):
        derived_key(kind, STUDY, SERIES, SOP, suffix)


@pytest.mark.parametrize(
    "key",
    ["staging/2024/01/01/abc", "dicom/1.2/3.4/5.6.dcm", "a", "A-b_c.d/e", "-x"],
)
def test_well_formed_keys_are_accepted(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../a",
        "a/..",
        "/a",
        "a\\b",
        "a\x00",
        "a//b",
        "a/",
        ".a",
        "a/.b",
        "a:b",
        "a%2f",
        "é",
        "a" * 256,
    ],
    ids=repr,
)
def test_keys_that_could_escape_or_confuse_a_backend_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_prefixes_are_valid_when_some_key_can_start_with_them() -> None:
    for prefix in ["", "dicom/", "dicom/1.2", "staging/2024/0"]:
        assert validate_prefix(prefix) == prefix
    for prefix in ["/", "../", ".", "a//", "a\\"]:
        with pytest.raises(InvalidKey):
            validate_prefix(prefix)


def test_invalid_key_message_escapes_control_characters() -> None:
    with pytest.raises(InvalidKey, match=r"\\x00") as raised:
        validate_key("a\x00b")
    assert raised.value.key == "a\x00b"
    assert raised.value.field == "key"

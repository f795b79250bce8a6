"""The byte-assembled QIDO renderer gives exactly the JSON of the plain dict-per-element one.

`reference` is the straightforward statement of PS3.18 Annex F the index used before (a dict
per element, encoded once); the production renderer builds the same bytes from precomputed
element heads. Every attribute, level and kind of value (missing, empty, multi-valued, person
names with groups, times with and without a fraction) is compared on generated rows.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from krypton.contracts.index.v1 import QidoLevelValues, QidoQuery
from krypton.index.render import ATTRIBUTES, render_results, return_keys


def _reference_value(keyword: str, vr: str, value: Any) -> list[Any]:
    if keyword == "ModalitiesInStudy":
        return list(value)
    if keyword == "SpecificCharacterSet":
        return str(value).split("\\")
    if vr == "DA":
        return [value.strftime("%Y%m%d")]
    if vr == "TM":
        text = value.strftime("%H%M%S")
        return [f"{text}.{value.microsecond:06d}" if value.microsecond else text]
    if vr == "PN":
        groups = dict(
            zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False)
        )
        return [{k: v for k, v in groups.items() if v}]
    return [value]


def reference(query: QidoQuery, rows: list[dict[str, Any]], base_url: str | None) -> bytes:
    """A dict per element, encoded once."""
    results = []
    for row in rows:
        item: dict[str, Any] = {}
        for keyword in return_keys(query):
            attribute = ATTRIBUTES[keyword]
            tag, vr = attribute.tag, attribute.vr
            if keyword == "InstanceAvailability":
                item[tag] = {"vr": vr, "Value": ["ONLINE"]}
            elif keyword == "RetrieveURL":
                if base_url is not None:
                    url = f"{base_url.rstrip('/')}/studies/{row['StudyInstanceUID']}"
                    if query.level is not QidoLevelValues.STUDY:
                        url += f"/series/{row['SeriesInstanceUID']}"
                    if query.level is QidoLevelValues.INSTANCE:
                        url += f"/instances/{row['SOPInstanceUID']}"
                    item[tag] = {"vr": vr, "Value": [url]}
            else:
                value = row[keyword]
                if value is None or value == "" or (isinstance(value, list) and not value):
                    item[tag] = {"vr": vr}
                else:
                    item[tag] = {"vr": vr, "Value": _reference_value(keyword, vr, value)}
        results.append(item)
    return msgspec.json.encode(results)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_uid = st.from_regex(r"1\.2\.[0-9]{1,8}", fullmatch=True)


def _value(keyword: str) -> st.SearchStrategy[Any]:
    vr = ATTRIBUTES[keyword].vr
    if keyword.endswith("InstanceUID"):
        strategy: st.SearchStrategy[Any] = _uid
    elif keyword == "ModalitiesInStudy":
        strategy = st.lists(st.sampled_from(["CT", "MR", "PT", "SR"]), max_size=3)
    elif keyword == "SpecificCharacterSet":
        strategy = st.sampled_from(["", "ISO_IR 100", "ISO_IR 192", "\\ISO 2022 IR 87"])
    elif vr == "DA":
        strategy = st.dates(min_value=date(1000, 1, 1))
    elif vr == "TM":
        strategy = st.times()
    elif vr == "PN":
        strategy = st.lists(_text.filter(lambda t: "=" not in t), min_size=1, max_size=3).map(
            "=".join
        )
    elif vr in ("US", "IS"):
        strategy = st.integers(min_value=0, max_value=2**31)
    else:
        strategy = _text
    return st.none() | strategy


_row = st.fixed_dictionaries({k: _value(k) for k in ATTRIBUTES if ATTRIBUTES[k].expr})


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    level=st.sampled_from(list(QidoLevelValues)),
    include_all=st.booleans(),
    rows=st.lists(_row, max_size=4),
    base_url=st.sampled_from([None, "https://pacs.example/dicomweb", "http://h/dicomweb/"]),
)
def test_bytes_renderer_matches_the_dict_renderer(
    level: QidoLevelValues,
    include_all: bool,
    rows: list[dict[str, Any]],
    base_url: str | None,
) -> None:
    for row in rows:  # the path's UIDs are never null in a result
        for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            row[uid] = row[uid] or "1.2.3"
    query = QidoQuery(level=level, include_all=include_all)
    fast = render_results(query, rows, base_url=base_url)
    assert fast == reference(query, rows, base_url)
    json.loads(fast)  # and it is JSON


def test_an_empty_answer_is_an_empty_array() -> None:
    assert render_results(QidoQuery(level=QidoLevelValues.STUDY), []) == b"[]"

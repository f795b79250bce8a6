"""Accept header parsing for WADO-RS (PS3.18 8.7): q-values, multipart part types, parameters."""

from __future__ import annotations

import pytest

from krypton.gateway.wado_accept import parse_accept, ranges_for_parts


def test_absent_accept_means_anything() -> None:
    assert [r.media_type for r in parse_accept(None)] == ["*/*"]


def test_ranges_are_ordered_by_q_and_q_zero_is_refused() -> None:
    ranges = parse_accept("image/png;q=0.5, image/jpeg, text/html;q=0")
    assert [(r.media_type, r.q) for r in ranges] == [("image/jpeg", 1.0), ("image/png", 0.5)]


def test_multipart_ranges_become_their_part_type_with_transfer_syntax() -> None:
    header = (
        'multipart/related; type="application/octet-stream"; transfer-syntax=*;q=0.9,'
        ' multipart/related; type="image/jls"'
    )
    parts = ranges_for_parts(parse_accept(header))
    assert [(p.media_type, p.transfer_syntax) for p in parts] == [
        ("image/jls", None),
        ("application/octet-stream", "*"),
    ]


def test_wildcards_match_their_family() -> None:
    (image,) = parse_accept("image/*")
    assert image.matches("image/jpeg")
    assert not image.matches("application/dicom")


def test_a_malformed_header_is_refused() -> None:
    with pytest.raises(ValueError, match="Accept"):
        parse_accept("not a media type")

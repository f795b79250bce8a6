"""Share code format: enough entropy, forgiving input, hashed secret."""

from __future__ import annotations

import math

from krypton.authorize import codes


def test_a_code_has_at_least_40_secret_bits_and_60_in_all() -> None:
    secret_bits = codes.SECRET_CHARS * math.log2(len(codes.ALPHABET))
    total_bits = (codes.SECRET_CHARS + codes.LOOKUP_CHARS) * math.log2(len(codes.ALPHABET))
    assert secret_bits >= 40
    assert total_bits >= 60


def test_codes_are_random_and_shown_in_three_groups() -> None:
    generated = {codes.generate().display() for _ in range(1000)}
    assert len(generated) == 1000
    sample = generated.pop()
    assert [len(g) for g in sample.split("-")] == [4, 4, 4]


def test_typing_is_forgiving_about_case_spaces_dashes_and_lookalikes() -> None:
    parts = codes.parse("ab0c-1DEF-GH2J")
    assert parts is not None
    again = codes.parse(" abOc 1def ghzj ".replace("z", "2"))
    assert again is not None
    assert (again.lookup, again.secret) == (parts.lookup, parts.secret)
    assert codes.parse("abIc-lDEF-GH2J") is not None  # I and L read as 1


def test_malformed_codes_are_refused() -> None:
    for text in ("", "ABCD-EFGH", "ABCD-EFGH-JKMN-P", "ABCD-EFGH-JKU!"):
        assert codes.parse(text) is None


def test_the_stored_hash_depends_on_the_pepper() -> None:
    assert codes.hash_secret(b"a", "SECRET12") != codes.hash_secret(b"b", "SECRET12")
    assert codes.hash_secret(b"a", "SECRET12") == codes.hash_secret(b"a", "SECRET12")

"""Share codes: generation, normalisation, hashing.

A code is 12 characters of Crockford base32 shown as ``XXXX-XXXX-XXXX`` (60 random bits). The
first group is a public lookup key (20 bits) that finds the candidate codes without trying a
hash against every row, and lets failed attempts be counted *per code*; the other 8 characters
are the secret (40 bits), kept only as an HMAC-SHA256 with a server-side pepper. Crockford's
alphabet has no I, L, O or U, and reading normalises the look-alikes (O→0, I/L→1).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

__all__ = [
    "ALPHABET",
    "LOOKUP_CHARS",
    "SECRET_CHARS",
    "ShareCodeParts",
    "generate",
    "hash_secret",
    "parse",
]

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LOOKUP_CHARS: Final = 4
SECRET_CHARS: Final = 8
_LOOKALIKES: Final = str.maketrans({"O": "0", "I": "1", "L": "1"})
_VALID: Final = frozenset(ALPHABET)


class ShareCodeParts:
    """A parsed code: its lookup group and its secret part."""

    __slots__ = ("lookup", "secret")

    def __init__(self, lookup: str, secret: str) -> None:
        self.lookup = lookup
        self.secret = secret

    def display(self) -> str:
        """The code as given to the patient: ``XXXX-XXXX-XXXX``."""
        s = self.secret
        return f"{self.lookup}-{s[:4]}-{s[4:]}"


def generate() -> ShareCodeParts:
    """A fresh random code (``secrets``: cryptographically strong)."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LOOKUP_CHARS + SECRET_CHARS))
    return ShareCodeParts(raw[:LOOKUP_CHARS], raw[LOOKUP_CHARS:])


def parse(text: str) -> ShareCodeParts | None:
    """Read a code as typed (any case, dashes and spaces ignored); None if it cannot be one."""
    cleaned = "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(cleaned) != LOOKUP_CHARS + SECRET_CHARS or not set(cleaned) <= _VALID:
        return None
    return ShareCodeParts(cleaned[:LOOKUP_CHARS], cleaned[LOOKUP_CHARS:])


def hash_secret(pepper: bytes, secret: str) -> bytes:
    """The stored form of a code's secret part."""
    return hmac.new(pepper, secret.encode("ascii"), hashlib.sha256).digest()

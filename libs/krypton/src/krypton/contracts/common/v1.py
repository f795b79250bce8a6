"""Shared contract types, v1. Additive changes only: new fields get defaults."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["Actor", "RoleValues"]


class RoleValues(enum.StrEnum):
    """What kind of caller a verified token describes."""

    PRODUCER = "producer"  # a producing structure's system (RIS/PACS/modality gateway)
    PROFESSIONAL = "professional"  # a health professional (RPPS/IDNPS)
    PATIENT = "patient"  # a patient, identified by INS
    ADMIN = "admin"  # platform administrator


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking, as established by the gateway from a verified token."""

    sub: str
    role: RoleValues
    issuer: str
    structure: str | None = None  # FINESS of the structure the actor acts for
    name: str | None = None
    profession: str | None = None
    ins: str | None = None  # for patients: their INS
    client_address: str | None = None
    token_id: str | None = None

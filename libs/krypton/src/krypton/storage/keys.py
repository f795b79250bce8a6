"""The one place that knows how object keys are laid out; every backend validates with it.

Layout (all keys are relative, `/`-separated, never start with `/` or contain `..`):

- `staging/<yyyy>/<mm>/<dd>/<upload_id>`: an upload as received, before ingest parses it.
- `quarantine/<yyyy>/<mm>/<dd>/<upload_id>`: an upload ingest refused, kept with its reason.
- `dicom/<study>/<series>/<sop>.dcm`: the canonical, original bytes of one instance.
- `derived/<study>/<series>/<sop>/<kind>.<suffix>`: renditions made later (other transfer
  syntaxes, thumbnails). Grouped under the study so that a study's renditions go with it.

Dated areas are split by UTC day so that directories stay small and old staging or quarantine
days can be swept by prefix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from krypton.storage.errors import InvalidKey

__all__ = [
    "MAX_KEY_LENGTH",
    "derived_key",
    "derived_prefix",
    "instance_key",
    "quarantine_key",
    "sidecar_key",
    "staging_key",
    "study_prefix",
    "transcoded_key",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_LENGTH = 1024
"""S3's limit on object names; far above what the layout produces."""

# A segment may not start with "." so that ".", "..", hidden files and the filesystem store's
# temporary files (".<name>.<random>.tmp") can never be named by a key.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_key(key: str) -> str:
    """Check that `key` is a safe, relative object key and return it unchanged.

    Only ASCII letters, digits, `.`, `_`, `-` and `/` are allowed; segments are non-empty and
    never start with `.`, which rules out `..`, a leading `/`, backslashes and NUL bytes.

    Args:
        key: The key to check.

    Returns:
        `key` itself, so calls can be chained.

    Raises:
        InvalidKey: The key could escape the store's namespace or is malformed.
    """
    if not key:
        raise InvalidKey(key, "empty key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(
                key, "key segments must be non-empty [A-Za-z0-9._-], not starting with '.'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix (`""`, `"dicom/"`, `"staging/2024/0"`) and return it unchanged.

    A prefix is valid when some valid key starts with it.

    Raises:
        InvalidKey: No valid key can start with `prefix`.
    """
    if prefix:
        validate_key(prefix + "x")
    return prefix


def _uid(value: str, what: str) -> str:
    if len(value) > 64 or not _UID.fullmatch(value):
        raise InvalidKey(value, f"{what} must be a DICOM UID (digits and dots, at most 64)")
    return value


def _id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidKey(value, "upload id must be 1-128 characters of [A-Za-z0-9_-]")
    return value


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidKey(value, f"{what} must be 1-64 characters of [A-Za-z0-9._-]")
    return value


def _dated(area: str, upload_id: str, at: datetime | None) -> str:
    day = (at or datetime.now(UTC)).astimezone(UTC)
    return f"{area}/{day:%Y/%m/%d}/{_id(upload_id)}"


def staging_key(upload_id: str, *, at: datetime | None = None) -> str:
    """Key of an upload waiting for ingest: `staging/<yyyy>/<mm>/<dd>/<upload_id>`.

    Args:
        upload_id: The upload's identifier, `[A-Za-z0-9_-]`, at most 128 characters.
        at: When the upload was received (aware datetime); now by default. The day is UTC.
    """
    return _dated("staging", upload_id, at)


def quarantine_key(upload_id: str, *, at: datetime | None = None) -> str:
    """Key of a refused upload: `quarantine/<yyyy>/<mm>/<dd>/<upload_id>` (UTC day)."""
    return _dated("quarantine", upload_id, at)


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Key of an instance's original bytes: `dicom/<study>/<series>/<sop>.dcm`.

    Args:
        study_uid: Study Instance UID (0020,000D).
        series_uid: Series Instance UID (0020,000E).
        sop_uid: SOP Instance UID (0008,0018).
    """
    return (
        f"dicom/{_uid(study_uid, 'study UID')}/{_uid(series_uid, 'series UID')}"
        f"/{_uid(sop_uid, 'SOP instance UID')}.dcm"
    )


def derived_key(kind: str, study_uid: str, series_uid: str, sop_uid: str, suffix: str) -> str:
    """Key of a rendition of an instance: `derived/<study>/<series>/<sop>/<kind>.<suffix>`.

    Args:
        kind: What the rendition is, e.g. `thumbnail-256` or `ts-1.2.840.10008.1.2.4.50`.
        study_uid: Study Instance UID.
        series_uid: Series Instance UID.
        sop_uid: SOP Instance UID.
        suffix: File-type suffix without the dot, e.g. `jpg`, `dcm`, `f1.png`.
    """
    return (
        f"derived/{_uid(study_uid, 'study UID')}/{_uid(series_uid, 'series UID')}"
        f"/{_uid(sop_uid, 'SOP instance UID')}/{_name(kind, 'kind')}.{_name(suffix, 'suffix')}"
    )


def transcoded_key(syntax: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Key of an instance transcoded to `syntax`: `derived/<study>/<series>/<sop>/ts-<syntax>.dcm`.

    Written by whoever transcodes (the render service, or the gateway for the fast codecs),
    read by both: one derived object per instance and syntax.
    """
    return derived_key(f"ts-{syntax}", study_uid, series_uid, sop_uid, "dcm")


def sidecar_key(key: str) -> str:
    """Key of the JSON sidecar of a transcoded object (`….json` beside `….dcm`).

    The sidecar is written after the object: its presence means the object is complete.
    """
    return key.removesuffix(".dcm") + ".json"


def study_prefix(study_uid: str) -> str:
    """Prefix of every original instance of a study: `dicom/<study>/`."""
    return f"dicom/{_uid(study_uid, 'study UID')}/"


def derived_prefix(study_uid: str) -> str:
    """Prefix of every rendition of a study: `derived/<study>/`."""
    return f"derived/{_uid(study_uid, 'study UID')}/"

"""The box's DICOM side (pynetdicom): C-ECHO, C-STORE into the spool, C-FIND and C-GET.

- C-STORE: every storage SOP class, in every transfer syntax pydicom knows (compressed ones
  included: the box keeps the bytes as sent, the region transcodes). The instance is parsed
  (header only) and written durably to the spool *before* the success status; unparseable data
  is quarantined and answered 0xC000 (cannot understand), a full spool 0xA700 (out of
  resources), so the modality keeps the instance and retries later.
- C-FIND (study, series, image levels; study and patient root) and C-GET: answered from the
  region's QIDO-RS / WADO-RS with the box's token, so the access policy is the region's.

pynetdicom calls the handlers from its association threads; they block on disk or HTTP, which
is what those threads are for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from krypton.core.logging import get_logger
from krypton.dicom.errors import FailureReasonValues
from krypton.dicom.qido import MATCHING_KEYS
from krypton.edge.region_client import RegionClient, RegionError
from krypton.edge.settings import EdgeSettings
from krypton.edge.spool import Spool, SpoolFullError

__all__ = ["DimseServer", "find_params"]

_log = get_logger("krypton.edge.dimse")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SUCCESS = 0x0000
_PENDING = 0xFF00
_CANCEL = 0xFE00
# C-FIND / C-GET "Unable to process" (PS3.4 C.4.1.1.4): the region refused or is unreachable.
_UNABLE = 0xC001
_IDENTIFIER_INVALID = 0xA900
# C-GET: sub-operations complete, one or more failures (PS3.4 C.4.3.1.4).
_GET_WARNING = 0xB000
_LEVELS = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}


def find_params(identifier: Dataset, level: str) -> tuple[str, list[tuple[str, str]]]:
    """The QIDO path and parameters answering a C-FIND identifier at `level`.

    Keys with a value become matching keys where QIDO can match on them at that level; every
    other requested key becomes an `includefield`, so the answer carries it if the region has it.

    Raises:
        ValueError: The identifier lacks the UIDs that the level needs.
    """
    from krypton.contracts.index.v1 import QidoLevelValues

    qido_level = QidoLevelValues(_LEVELS[level])
    matchable = MATCHING_KEYS[qido_level]
    params: list[tuple[str, str]] = []
    study = identifier.get("StudyInstanceUID", "") or ""
    series = identifier.get("SeriesInstanceUID", "") or ""
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in {"QueryRetrieveLevel", "SpecificCharacterSet"}:
            continue
        if element.VR == "SQ":
            continue  # sequence matching is not offered by the region's QIDO
        value = element.value
        text = "\\".join(str(v) for v in value) if element.VM > 1 else str(value or "")
        if level != "STUDY" and keyword == "StudyInstanceUID" and study:
            continue  # in the path below
        if level == "IMAGE" and keyword == "SeriesInstanceUID" and series:
            continue
        if text and text != "*" and keyword in matchable:
            params.append((keyword, text))
        else:
            params.append(("includefield", keyword))
    if level == "STUDY":
        return "studies", params
    if not study:
        msg = "a series or image level C-FIND needs the Study Instance UID"
        raise ValueError(msg)
    if level == "SERIES":
        return f"studies/{study}/series", params
    if not series:
        msg = "an image level C-FIND needs the Series Instance UID"
        raise ValueError(msg)
    return f"studies/{study}/series/{series}/instances", params


def _answer(identifier: Dataset, found: dict[str, Any], level: str) -> Dataset:
    """The C-FIND response identifier: the requested keys, valued from a QIDO result."""
    result = Dataset.from_json(found)
    answer = Dataset()
    for element in identifier:
        if element.tag in result:
            answer[element.tag] = result[element.tag]
        elif element.keyword not in {"QueryRetrieveLevel", "SpecificCharacterSet"}:
            answer.add(DataElement(element.tag, element.VR, None))
    if "SpecificCharacterSet" in result:
        answer.SpecificCharacterSet = result.SpecificCharacterSet
    answer.QueryRetrieveLevel = level
    return answer


class DimseServer:
    """The box's application entity and its handlers.

    Args:
        settings: The box's settings.
        spool: Where accepted instances go.
        region: Client of the region's DICOMweb API.
        on_spooled: Called (from a handler thread) after each instance reaches the spool.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        spool: Spool,
        region: RegionClient,
        on_spooled: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.region = region
        self.on_spooled = on_spooled
        self.received_total = 0
        self.last_received_ns: int | None = None
        self.server: ThreadedAssociationServer | None = None
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = 0  # no limit on what peers send per PDU
        ae.add_supported_context(Verification)
        syntaxes = sorted(set(ALL_TRANSFER_SYNTAXES) | {str(u) for u in AllTransferSyntaxes})
        for context in AllStoragePresentationContexts:
            # scu_role: a C-GET requestor asks the box to act as storage SCU on its association.
            assert context.abstract_syntax is not None
            ae.add_supported_context(
                context.abstract_syntax, syntaxes, scu_role=True, scp_role=True
            )
        for model in (
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            PatientRootQueryRetrieveInformationModelGet,
        ):
            ae.add_supported_context(model)
        if settings.allowed_calling_aes:
            ae.require_calling_aet = list(settings.allowed_calling_aes)
        self.ae = ae

    def start(self) -> None:
        """Listen (in pynetdicom's threads) and return."""
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
        ]
        self.server = self.ae.start_server(
            (self.settings.dimse_host, self.settings.dimse_port),
            block=False,
            evt_handlers=handlers,  # type: ignore[arg-type]
        )
        _log.info(
            "dicom listener ready",
            ae_title=self.settings.ae_title,
            port=self.settings.dimse_port,
        )

    def stop(self) -> None:
        """Stop listening and close associations."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_echo(self, event: Event) -> int:
        return _SUCCESS

    def _on_store(self, event: Event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # pynetdicom could not even rebuild the file
            _log.warning("c-store: undecodable request", calling_ae=calling, error=repr(exc))
            return int(FailureReasonValues.CANNOT_UNDERSTAND)
        if len(data) > self.settings.max_instance_bytes:
            _log.warning("c-store: instance too large", calling_ae=calling, size=len(data))
            return int(FailureReasonValues.OUT_OF_RESOURCES)
        affected = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        reason = _check(data, affected)
        if reason is not None:
            try:
                kept = self.spool.quarantine(data, reason)
            except OSError as exc:
                _log.error("c-store: quarantine failed", error=repr(exc))
                return int(FailureReasonValues.OUT_OF_RESOURCES)
            _log.warning(
                "c-store: refused, quarantined", calling_ae=calling, reason=reason, path=str(kept)
            )
            return int(FailureReasonValues.CANNOT_UNDERSTAND)
        try:
            entry = self.spool.accept(data, affected)
        except SpoolFullError as exc:
            _log.error(
                "c-store: spool full, refused", calling_ae=calling, used=exc.used, limit=exc.limit
            )
            return int(FailureReasonValues.OUT_OF_RESOURCES)
        except OSError as exc:
            _log.error("c-store: spool write failed", calling_ae=calling, error=repr(exc))
            return int(FailureReasonValues.OUT_OF_RESOURCES)
        self.received_total += 1
        self.last_received_ns = entry.received_ns
        self.on_spooled()
        return _SUCCESS

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "")
        if level == "PATIENT" or level not in _LEVELS:
            # Patient-level queries would disclose identities without a study: not offered.
            yield _IDENTIFIER_INVALID, None
            return
        try:
            path, params = find_params(identifier, level)
        except ValueError as exc:
            _log.info("c-find: refused identifier", reason=str(exc))
            yield _IDENTIFIER_INVALID, None
            return
        try:
            for found in self.region.search(path, params):
                if event.is_cancelled:
                    yield _CANCEL, None
                    return
                yield _PENDING, _answer(identifier, found, level)
        except RegionError as exc:
            _log.warning("c-find: region refused", status=exc.status, error=str(exc))
            yield _UNABLE, None
            return
        yield _SUCCESS, None

    def _on_get(self, event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
        identifier = event.identifier
        study = str(identifier.get("StudyInstanceUID", "") or "")
        series = str(identifier.get("SeriesInstanceUID", "") or "") or None
        sop = str(identifier.get("SOPInstanceUID", "") or "") or None
        if not _UID.fullmatch(study) or any(
            u is not None and not _UID.fullmatch(u) for u in (series, sop)
        ):
            yield _IDENTIFIER_INVALID, None
            return
        try:
            instances = self.region.retrieve(study, series, sop if series else None)
        except RegionError as exc:
            # A study the structure may not see answers like a missing one: nothing to send.
            if exc.status == 404:
                yield 0
                yield _SUCCESS, None
                return
            _log.warning("c-get: region refused", status=exc.status, error=str(exc))
            yield _UNABLE, None
            return
        yield len(instances)
        for instance in instances:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            yield _PENDING, instance


def _check(data: bytes, affected_sop: str) -> str | None:
    """Why the instance cannot be accepted, or None (header parse only, never the pixels)."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        return f"unparseable: {type(exc).__name__}"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if len(value) > 64 or not _UID.fullmatch(value):
            return f"missing or invalid {keyword}"
    if str(ds.SOPInstanceUID) != affected_sop:
        return "SOP Instance UID differs from the C-STORE request's"
    return None

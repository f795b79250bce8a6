"""Audit records as JSON, as a FHIR R4 Bundle of AuditEvent, or as DICOM PS3.15 A.5 XML.

The FHIR form follows the R4 AuditEvent resource (DICOM event codes in `type`/`subtype`, the
access basis in `purposeOfEvent`, patients and studies in `entity`, the NumberOfInstances
extension on studies). The DICOM form is one ``AuditMessage`` (PS3.15 A.5.1 schema, coded values
as ``csd-code``/``codeSystemName``/``originalText``) per record, wrapped in ``AuditMessages``.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from krypton.audit.codes import Code, codes_for, outcome_indicator
from krypton.audit.query import Record
from krypton.contracts.audit.v1 import AccessBasisValues, AuditEvent, AuditEventTypeValues as T

__all__ = ["to_dicom_xml", "to_fhir", "to_json"]

DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
BASIS_SYSTEM: Final = "https://krypton.health/fhir/CodeSystem/access-basis"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
INS_NIR_OID: Final = "urn:oid:1.2.250.1.213.1.4.8"
IDNST_OID: Final = "urn:oid:1.2.250.1.71.4.2.2"
NUMBER_OF_INSTANCES: Final = "http://hl7.org/fhir/StructureDefinition/auditevent-NumberOfInstances"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"  # the QIDO-RS equivalent's SOP class

# Purpose of use in HL7 v3 ActReason terms, next to Krypton's own basis code.
_PURPOSE: Final = {
    AccessBasisValues.CARE_RELATIONSHIP: ("TREAT", "treatment"),
    AccessBasisValues.COMMUNITY: ("TREAT", "treatment"),
    AccessBasisValues.PRODUCING_STRUCTURE: ("TREAT", "treatment"),
    AccessBasisValues.TELERADIOLOGY: ("TREAT", "treatment"),
    AccessBasisValues.SHARE_CODE: ("PATRQT", "patient requested"),
    AccessBasisValues.PATIENT_SELF: ("PATRQT", "patient requested"),
    AccessBasisValues.BREAK_THE_GLASS: ("ETREAT", "Emergency Treatment"),
    AccessBasisValues.ADMIN: ("HOPERAT", "healthcare operations"),
}
_RETRIEVALS: Final = frozenset(
    {T.RETRIEVE_INSTANCE, T.RETRIEVE_RENDERED, T.RETRIEVE_METADATA, T.RETRIEVE_REPORT}
)


def to_json(records: Sequence[Record]) -> bytes:
    """Records as a JSON array of ``{seq, recorded, event}``."""
    return msgspec.json.encode(
        [{"seq": r.seq, "recorded": r.recorded_at.isoformat(), "event": r.event} for r in records]
    )


def _patient_ids(event: AuditEvent) -> list[tuple[str, str | None]]:
    """(identifier, FHIR system) of each patient; INS first when known."""
    out: list[tuple[str, str | None]] = []
    for patient in event.patients:
        if patient.ins:
            out.append((patient.ins, INS_NIR_OID))
        elif patient.key:
            out.append((patient.key, None))
        elif patient.patient_id:
            out.append((patient.patient_id, None))
    return out


def _coding(code: Code) -> dict[str, str]:
    return {"system": DCM_SYSTEM, "code": code.code, "display": code.meaning}


def _fhir_event(record: Record) -> dict[str, Any]:
    event = record.event
    codes = codes_for(event.type)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event.event_id,
        "type": _coding(codes.event_id),
        "action": codes.action,
        "period": {"start": event.time},
        "recorded": record.recorded_at.isoformat(),
        "outcome": outcome_indicator(event.outcome),
    }
    if codes.type_code is not None:
        resource["subtype"] = [_coding(codes.type_code)]
    if event.reason:
        resource["outcomeDesc"] = event.reason
    if event.basis is not AccessBasisValues.NONE:
        coding = [{"system": BASIS_SYSTEM, "code": event.basis.value}]
        if event.basis in _PURPOSE:
            code, display = _PURPOSE[event.basis]
            coding.append({"system": ACT_REASON, "code": code, "display": display})
        resource["purposeOfEvent"] = [{"coding": coding}]
    agent: dict[str, Any] = {"requestor": True}
    actor = event.actor
    who: dict[str, Any] = {}
    if actor.sub:
        who["identifier"] = (
            {"system": actor.issuer, "value": actor.sub} if actor.issuer else {"value": actor.sub}
        )
    if actor.name:
        who["display"] = actor.name
        agent["name"] = actor.name
    agent["who"] = who or {"display": "unauthenticated"}
    roles: list[dict[str, Any]] = []
    if actor.role:
        roles.append({"text": actor.role})
    if actor.profession:
        roles.append({"coding": [{"code": actor.profession}], "text": "profession"})
    if roles:
        agent["role"] = roles
    if actor.structure:
        agent["extension"] = [
            {
                "url": "https://krypton.health/fhir/StructureDefinition/acting-structure",
                "valueIdentifier": {"system": IDNST_OID, "value": f"1{actor.structure}"},
            }
        ]
    if event.client_address:
        agent["network"] = {"address": event.client_address, "type": "2"}
    resource["agent"] = [agent]
    resource["source"] = {
        "site": "krypton",
        "observer": {"display": f"krypton-{event.service}"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities: list[dict[str, Any]] = []
    for value, system in _patient_ids(event):
        identifier = {"system": system, "value": value} if system else {"value": value}
        entities.append(
            {
                "what": {"identifier": identifier},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for uid in event.study_uids:
        entity: dict[str, Any] = {
            "what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
        }
        if event.instances is not None and len(event.study_uids) == 1:
            entity["extension"] = [{"url": NUMBER_OF_INSTANCES, "valueInteger": event.instances}]
        entities.append(entity)
    if event.query is not None:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(event.query.encode()).decode(),
            }
        )
    if event.justification:
        entities.append({"name": "justification", "description": event.justification})
    if entities:
        resource["entity"] = entities
    return resource


def to_fhir(records: Sequence[Record]) -> bytes:
    """Records as a FHIR R4 ``searchset`` Bundle of AuditEvent resources."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(records),
        "entry": [
            {"fullUrl": f"urn:uuid:{r.event.event_id}", "resource": _fhir_event(r)} for r in records
        ],
    }
    return msgspec.json.encode(bundle)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _dicom_message(parent: ET.Element, event: AuditEvent) -> None:
    codes = codes_for(event.type)
    message = ET.SubElement(parent, "AuditMessage")
    ident = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": codes.action,
            "EventDateTime": event.time,
            "EventOutcomeIndicator": outcome_indicator(event.outcome),
        },
    )
    _coded(ident, "EventID", codes.event_id)
    if codes.type_code is not None:
        _coded(ident, "EventTypeCode", codes.type_code)
    if event.reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.reason
    if event.basis is not AccessBasisValues.NONE:
        ET.SubElement(
            ident,
            "PurposeOfUse",
            {
                "csd-code": event.basis.value,
                "codeSystemName": "KRYPTON",
                "originalText": event.basis.value,
            },
        )
    actor = event.actor
    requestor: dict[str, str] = {"UserID": actor.sub or "unknown", "UserIsRequestor": "true"}
    if actor.structure:
        requestor["AlternativeUserID"] = f"FINESS={actor.structure}"
    if actor.name:
        requestor["UserName"] = actor.name
    if event.client_address:
        requestor["NetworkAccessPointTypeCode"] = "2"
        requestor["NetworkAccessPointID"] = event.client_address
    person = ET.SubElement(message, "ActiveParticipant", requestor)
    # Who receives the data is the Destination; who asks a question or sends data is the Source.
    if event.type in _RETRIEVALS:
        _coded(person, "RoleIDCode", Code("110152", "Destination Role ID"))
    else:
        _coded(person, "RoleIDCode", Code("110153", "Source Role ID"))
    application = ET.SubElement(
        message,
        "ActiveParticipant",
        {"UserID": f"krypton-{event.service}", "UserIsRequestor": "false"},
    )
    _coded(application, "RoleIDCode", Code("110150", "Application"))
    source = ET.SubElement(
        message,
        "AuditSourceIdentification",
        {"AuditEnterpriseSiteID": "krypton", "AuditSourceID": f"krypton-{event.service}"},
    )
    _coded(source, "AuditSourceTypeCode", Code("4", "Application Server process tier"))
    for value, _system in _patient_ids(event):
        patient = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": value,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", Code("2", "Patient Number", "RFC-3881"))
    for uid in event.study_uids:
        study = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _coded(study, "ParticipantObjectIDTypeCode", Code("110180", "Study Instance UID"))
        if event.instances is not None and len(event.study_uids) == 1:
            description = ET.SubElement(study, "ParticipantObjectDescription")
            ET.SubElement(description, "SOPClass", {"NumberOfInstances": str(event.instances)})
    if event.query is not None:
        query = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": STUDY_ROOT_FIND,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _coded(query, "ParticipantObjectIDTypeCode", Code("110181", "SOP Class UID"))
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(
            event.query.encode()
        ).decode()


def to_dicom_xml(records: Sequence[Record]) -> bytes:
    """Records as DICOM PS3.15 A.5 ``AuditMessage`` elements inside one ``AuditMessages``."""
    root = ET.Element("AuditMessages")
    for record in records:
        _dicom_message(root, record.event)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data

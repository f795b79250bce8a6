"""Request/reply handlers: decisions and policy commands on ``svc.authz.*``.

Commands arrive as `AuthzCommand`s; the reply body is JSON (the result, or a problem detail)
and its HTTP status rides in the ``Krypton-Status`` header, so the gateway forwards both as
they are. Every command that changed something has its events on the bus before the reply:
a 2xx means the change is durable and published. Changes and refusals (403, 429) are audited
by authorize itself (`krypton.authorize.trail`); a refusal's reply carries ``Krypton-Audited``
so the gateway does not record it a second time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec

from krypton.authorize import communities, trail
from krypton.authorize.errors import PolicyError
from krypton.authorize.outbox import OutboxPublisher
from krypton.authorize.policy import Policy
from krypton.bus.codec import encode
from krypton.contracts.authorize.v1 import (
    AuthzCommand,
    BreakGlassOpen,
    BreakGlassReview,
    CareDeclaration,
    CommunityMemberAdd,
    CommunityRecord,
    CommunityShareCreate,
    OppositionChange,
    PatientRecord,
    ProfessionalRecord,
    SelfAttestation,
    ShareCodeCreate,
    ShareCodeRedeem,
    StructureRecord,
)
from krypton.core.logging import get_logger

__all__ = ["AUDITED_HEADER", "OPERATIONS", "Reply", "handle_command"]

_log = get_logger("krypton.authorize.handlers")
T = TypeVar("T")

#: Reply header telling the gateway that authorize recorded the refusal's audit event.
AUDITED_HEADER: Final = "Krypton-Audited"
_REFUSALS: Final = frozenset({403, 429})

#: (status, JSON body, extra headers)
Reply = tuple[int, bytes, dict[str, str]]
Operation = Callable[[Policy, AuthzCommand], Awaitable[tuple[int, Any]]]


def _body(command: AuthzCommand, type_: type[T]) -> T:
    raw = bytes(command.body) or b"{}"
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise PolicyError(400, f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise PolicyError(400, "the body is not valid JSON") from None


def _param(command: AuthzCommand, name: str) -> str:
    value = command.params.get(name)
    if not value:
        raise PolicyError(400, f"missing parameter {name}")
    return value


def _flag(command: AuthzCommand, name: str) -> bool:
    return command.params.get(name, "").lower() in ("1", "true", "yes")


async def _care_declare(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 201, await p.declare_care(c.actor, _body(c, CareDeclaration))


async def _care_attest(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 201, await p.attest_care(c.actor, _body(c, SelfAttestation))


async def _care_end(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.end_care(c.actor, _param(c, "id"))


async def _care_list(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.list_care(c.actor, c.params.get("patient_ins"))


async def _code_create(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 201, await p.create_code(c.actor, _body(c, ShareCodeCreate))


async def _code_list(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.list_codes(c.actor)


async def _code_revoke(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.revoke_code(c.actor, _param(c, "id"))


async def _code_redeem(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.redeem_code(c.actor, _body(c, ShareCodeRedeem))


async def _opposition_set(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.set_opposition(c.actor, _body(c, OppositionChange))


async def _opposition_lift(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.lift_opposition(c.actor, _body(c, OppositionChange))


async def _opposition_get(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.opposition_status(c.actor, c.params.get("patient_ins"))


async def _btg_open(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 201, await p.open_break_glass(c.actor, _body(c, BreakGlassOpen))


async def _btg_list(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.list_break_glass(c.actor, _flag(c, "unreviewed"))


async def _btg_review(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.review_break_glass(c.actor, _param(c, "id"), _body(c, BreakGlassReview))


async def _structure_put(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.put_structure(c.actor, _param(c, "finess"), _body(c, StructureRecord))


async def _structure_list(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.list_structures(c.actor)


async def _professional_put(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.put_professional(c.actor, _param(c, "sub"), _body(c, ProfessionalRecord))


async def _professional_list(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.list_professionals(c.actor)


async def _patient_put(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.put_patient(c.actor, _param(c, "ins"), _body(c, PatientRecord))


async def _patient_get(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await p.get_patient(c.actor, _param(c, "ins"))


async def _community_put(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    body = _body(c, CommunityRecord)
    return 200, await communities.put_community(p, c.actor, _param(c, "id"), body)


async def _community_get(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await communities.get_community(p, c.actor, _param(c, "id"))


async def _member_add(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    body = _body(c, CommunityMemberAdd)
    return 200, await communities.add_member(p, c.actor, _param(c, "id"), body)


async def _member_remove(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await communities.remove_member(p, c.actor, _param(c, "id"), _param(c, "sub"))


async def _community_share(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    body = _body(c, CommunityShareCreate)
    return 201, await communities.share(p, c.actor, _param(c, "id"), body)


async def _community_share_end(p: Policy, c: AuthzCommand) -> tuple[int, Any]:
    return 200, await communities.end_share(p, c.actor, _param(c, "id"), _param(c, "share_id"))


#: Operation name (the subject suffix after ``svc.authz.``) → handler.
OPERATIONS: Final[dict[str, Operation]] = {
    "care.declare": _care_declare,
    "care.attest": _care_attest,
    "care.end": _care_end,
    "care.list": _care_list,
    "code.create": _code_create,
    "code.list": _code_list,
    "code.revoke": _code_revoke,
    "code.redeem": _code_redeem,
    "opposition.set": _opposition_set,
    "opposition.lift": _opposition_lift,
    "opposition.get": _opposition_get,
    "btg.open": _btg_open,
    "btg.list": _btg_list,
    "btg.review": _btg_review,
    "admin.structure.put": _structure_put,
    "admin.structure.list": _structure_list,
    "admin.professional.put": _professional_put,
    "admin.professional.list": _professional_list,
    "admin.patient.put": _patient_put,
    "admin.patient.get": _patient_get,
    "admin.community.put": _community_put,
    "admin.community.member.add": _member_add,
    "admin.community.member.remove": _member_remove,
    "community.get": _community_get,
    "community.share": _community_share,
    "community.share.end": _community_share_end,
}


def _problem(status: int, detail: str) -> bytes:
    return encode({"type": "about:blank", "status": status, "detail": detail})


async def _publish(publisher: OutboxPublisher) -> None:
    """Publish now; if the bus is down the change is committed and the loop publishes later."""
    try:
        await publisher.flush()
    except Exception as exc:
        _log.warning("outbox publish deferred", error=repr(exc))
        publisher.poke()


async def handle_command(policy: Policy, publisher: OutboxPublisher, op: str, data: bytes) -> Reply:
    """Run one command; never raises (a failure becomes a problem reply)."""
    operation = OPERATIONS.get(op)
    if operation is None:
        return 404, _problem(404, "unknown operation"), {}
    try:
        command = msgspec.json.decode(data, type=AuthzCommand)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return 400, _problem(400, "malformed command"), {}
    token = trail.bind(trail.CallContext(trace_id=command.trace_id, resource=command.resource))
    try:
        status, result = await operation(policy, command)
    except PolicyError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        if exc.status in _REFUSALS:
            # Refusals are security events: log who and what, never the body (a share code),
            # and audit them (fail closed: if that write fails the caller gets a 503).
            _log.info("policy command refused", op=op, actor=command.actor.sub, status=exc.status)
            if not exc.audited:
                await policy.record_refusal(command.actor, op, exc)
            headers[AUDITED_HEADER] = "1"
        # Failures may have written events too (a share code locked by failed attempts).
        await _publish(publisher)
        return exc.status, _problem(exc.status, exc.reason), headers
    finally:
        trail.unbind(token)
    await _publish(publisher)
    return status, encode(result), {}

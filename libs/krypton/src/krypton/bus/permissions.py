"""Per-service NATS permissions: each service publishes and subscribes only on its own subjects.

The one table of who may do what on the bus, derived from `krypton.contracts.subjects` and the
streams and durable consumers each service owns. `nats_authorization` renders it as the
`authorization` block of a nats-server configuration (deploy/nats/permissions.conf, the Helm
values, and the embedded platform when `PlatformConfig.nats_auth` is on); tests check the
deployment files against it and run the platform under it.

What a service needs besides its own subjects:
- JetStream API requests (`$JS.API.…`): creating or updating the streams it provisions at start,
  binding its durable pull consumers (info, create, next batch), and acknowledging (`$JS.ACK`).
- Its own inbox, `_INBOX.krypton.<service>.>` (`krypton.bus.connect` sets the prefix), for
  request replies, JetStream publish acks and pull deliveries: no service reads another's.
- Replies to the requests it serves, through `allow_responses` (only to a received reply
  subject, once), never a blanket `_INBOX.>` publish right.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from krypton.bus import streams
from krypton.contracts import subjects

__all__ = [
    "PERMISSIONS",
    "ServicePermissions",
    "authorization_users",
    "edge_leaf_authorization",
    "edge_leaf_durable",
    "edge_leaf_permissions",
    "edge_leaf_user",
    "edge_leaf_users",
    "inbox_prefix",
    "nats_authorization",
    "password_variable",
]

_JS = "$JS.API"


def inbox_prefix(service: str) -> str:
    """The inbox prefix of every connection of `service`."""
    return f"_INBOX.krypton.{service}"


@dataclass(frozen=True)
class ServicePermissions:
    """What one service may publish and subscribe to, and whether it answers requests."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False


def _provision(*specs: streams.StreamSpec) -> list[str]:
    return [f"{_JS}.STREAM.{op}.{s.name}" for s in specs for op in ("CREATE", "UPDATE", "INFO")]


def _durable(stream: str, durable: str) -> list[str]:
    # nats-py binds with INFO, creates with CREATE.<stream>.<durable>[.<filter>], fetches with
    # MSG.NEXT and acks on $JS.ACK.<stream>.<durable>.…
    return [
        f"{_JS}.CONSUMER.INFO.{stream}.{durable}",
        f"{_JS}.CONSUMER.CREATE.{stream}.{durable}",
        f"{_JS}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{_JS}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _perms(
    service: str, publish: Iterable[str], subscribe: Iterable[str] = (), *, responds: bool = False
) -> ServicePermissions:
    return ServicePermissions(
        publish=tuple(publish),
        subscribe=(*subscribe, f"{inbox_prefix(service)}.>"),
        responds=responds,
    )


PERMISSIONS: Mapping[str, ServicePermissions] = {
    "gateway": _perms(
        "gateway",
        [
            *_provision(*streams.ALL_STREAMS),
            f"{subjects.INGEST_RECEIVED}.>",
            f"{subjects.AUDIT_EVENT}.>",
            subjects.SVC_INDEX_QIDO,
            subjects.SVC_INDEX_LOCATE,
            subjects.SVC_INDEX_PING,
            subjects.SVC_TRANSCODE_INSTANCE,
            subjects.SVC_RENDER_FRAME,
            f"{subjects.SVC_AUTHZ}.>",
            subjects.SVC_AUDIT_QUERY,
        ],
        # Policy changes empty the gateway's locate cache (wado_cache.LocateCache).
        [f"{subjects.POLICY_CHANGED}.>"],
    ),
    "ingest": _perms(
        "ingest",
        [
            *_provision(*streams.ALL_STREAMS),
            *_durable(subjects.INGEST_STREAM, "ingest"),
            f"{subjects.INSTANCE_STORED}.>",
            f"{subjects.INSTANCE_REJECTED}.>",
            # The verdict on an upload goes to the inbox the gateway named in the event.
            f"{inbox_prefix('gateway')}.>",
        ],
    ),
    "index": _perms(
        "index",
        [
            *_provision(*streams.ALL_STREAMS),
            *_durable(subjects.INSTANCES_STREAM, "index"),
            *_durable(subjects.POLICY_STREAM, "index-policy"),
        ],
        [subjects.SVC_INDEX_QIDO, subjects.SVC_INDEX_LOCATE, subjects.SVC_INDEX_PING],
        responds=True,
    ),
    "render": _perms(
        "render",
        [*_provision(*streams.ALL_STREAMS), *_durable(subjects.INSTANCES_STREAM, "render")],
        [subjects.SVC_RENDER_FRAME, subjects.SVC_TRANSCODE_INSTANCE],
        responds=True,
    ),
    "authorize": _perms(
        "authorize",
        [
            *_provision(streams.POLICY, streams.AUDIT),
            f"{subjects.POLICY_CHANGED}.>",
            f"{subjects.AUDIT_EVENT}.>",
        ],
        [f"{subjects.POLICY_CHANGED}.>", f"{subjects.SVC_AUTHZ}.>"],
        responds=True,
    ),
    "audit": _perms(
        "audit",
        [
            *_provision(*streams.ALL_STREAMS),
            *_durable(subjects.AUDIT_STREAM, "audit"),
            *_durable(subjects.INSTANCES_STREAM, "audit-studies"),
            subjects.AUDIT_CHECKPOINT,
        ],
        [subjects.SVC_AUDIT_QUERY, subjects.SVC_AUDIT_PING],
        responds=True,
    ),
}


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def nats_authorization(passwords: Mapping[str, str], extra_users: Iterable[str] = ()) -> str:
    """The `authorization { users = [...] }` block for nats-server, one user per service.

    Args:
        passwords: Per service, the password text as it goes into the file: a literal (the
            embedded platform) or a `$VARIABLE` nats-server expands from its environment.
        extra_users: More entries for the list, as they go into the file (`edge_leaf_users`).
    """
    lines = ["authorization {", "  users = ["]
    for service, perms in PERMISSIONS.items():
        password = passwords[service]
        if not password.startswith("$"):
            password = f'"{password}"'
        lines += [
            f'    {{ user: "{service}", password: {password}, permissions: {{',
            f"        publish: {{ allow: {_list(perms.publish)} }}",
            f"        subscribe: {{ allow: {_list(perms.subscribe)} }}",
        ]
        if perms.responds:
            lines.append("        allow_responses: true")
        # A service password must not open a leaf node link (that is the boxes' way in).
        lines.append('    }, allowed_connection_types: ["STANDARD"] }')
    lines += [*extra_users, "  ]", "}"]
    return "\n".join(lines) + "\n"


def password_variable(service: str) -> str:
    """The environment variable holding `service`'s NATS password in the deployment files."""
    return f"KRYPTON_NATS_PASSWORD_{service.upper()}"


def authorization_users(password: str = "<< ${var} >>") -> list[dict[str, object]]:
    """The users of `nats_authorization` as data (the NATS Helm chart's `config.merge`).

    Args:
        password: Template of each password, `{var}` being `password_variable(service)`; the
            default is the Helm chart's reference to a container environment variable.
    """
    users: list[dict[str, object]] = []
    for service, perms in PERMISSIONS.items():
        permissions: dict[str, object] = {
            "publish": {"allow": list(perms.publish)},
            "subscribe": {"allow": list(perms.subscribe)},
        }
        if perms.responds:
            permissions["allow_responses"] = True
        users.append(
            {
                "user": service,
                "password": password.format(var=password_variable(service)),
                "permissions": permissions,
                "allowed_connection_types": ["STANDARD"],
            }
        )
    return users


# Edge boxes (issue 10): each box's nats-server is a leaf node of the regional one and logs in
# on the leaf node listener as `edge-<finess>`. nats-server's `leafnodes.authorization.users`
# take no permissions, so the box users live in the server's main `authorization` block,
# restricted to leaf connections (`allowed_connection_types`). On a leaf connection the user's
# permissions read from the hub's side: `publish` is what the leaf may send into the region,
# `subscribe` what the region may send to the leaf (nats-server checks both directions).
EDGE_FORWARDER = "edge"  # `krypton edge region` connects as "edge-region": inbox of "edge"
_LOCAL_USER = "local"


def edge_leaf_user(structure: str) -> str:
    """The user the box of `structure` logs in as on the region's leaf node listener."""
    return f"edge-{subjects.safe_token(structure)}"


def edge_leaf_durable(structure: str) -> str:
    """The region forwarder's durable consumer on the box of `structure` (one per box)."""
    return f"region-{subjects.safe_token(structure)}"


def edge_leaf_permissions(structure: str) -> ServicePermissions:
    """What crosses the leaf link of the box of `structure`, and nothing else.

    The region's forwarder sends the box JetStream API requests in the box's domain (consumer
    info/create, fetch) and acks for the box's stream; the box sends back only replies and
    pull deliveries, which go to the forwarder's inbox. Not another box's domain, not the
    region's own subjects (`ingest.received`, `$JS.API`), nothing the box could listen to.
    """
    domain = subjects.edge_domain(structure)
    return ServicePermissions(
        publish=(f"{inbox_prefix(EDGE_FORWARDER)}.>",),
        subscribe=(
            f"$JS.{domain}.API.>",
            f"$JS.ACK.{subjects.EDGE_STREAM}.{edge_leaf_durable(structure)}.>",
        ),
    )


def edge_leaf_users(passwords: Mapping[str, str]) -> list[str]:
    """The `authorization.users` entries of the edge boxes, one per FINESS in `passwords`.

    Args:
        passwords: Per box FINESS, its password as it goes into the file: a literal, a bcrypt
            hash (`nats-server passwd`), or a `$VARIABLE` nats-server expands.
    """
    entries = []
    for structure, secret in passwords.items():
        password = secret if secret.startswith("$") else json.dumps(secret)
        perms = edge_leaf_permissions(structure)
        entries.append(
            f'    {{ user: "{edge_leaf_user(structure)}", password: {password},'
            ' allowed_connection_types: ["LEAFNODE"], permissions: {\n'
            f"        publish: {{ allow: {_list(perms.publish)} }}\n"
            f"        subscribe: {{ allow: {_list(perms.subscribe)} }}\n"
            "    } }"
        )
    return entries


def edge_leaf_authorization(passwords: Mapping[str, str]) -> str:
    """An `authorization` block for a regional nats-server without per-service users.

    Clients without credentials keep connecting as before, as `no_auth_user` `local`, which
    only ordinary client connections may use; a leaf node must log in as one of the boxes, so
    the leaf node listener refuses anyone else (everyone, when `passwords` is empty).
    """
    users = [
        f'    {{ user: "{_LOCAL_USER}", password: {json.dumps(secrets.token_urlsafe(24))},'
        ' allowed_connection_types: ["STANDARD"] }',
        *edge_leaf_users(passwords),
    ]
    return (
        "authorization {\n  users = [\n"
        + "\n".join(users)
        + f'\n  ]\n}}\nno_auth_user: "{_LOCAL_USER}"\n'
    )

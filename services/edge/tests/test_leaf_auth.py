"""The region's leaf node listener: only known boxes link, each confined to its forwarding.

Real nats-servers: a hub configured with `edge_leaf_authorization` (as `krypton up
--leafnode-port` and the production nats.conf) and a box's `LeafServer`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from krypton.bus.permissions import (
    EDGE_FORWARDER,
    PERMISSIONS,
    edge_leaf_authorization,
    edge_leaf_durable,
    edge_leaf_users,
    inbox_prefix,
    nats_authorization,
)
from krypton.contracts import subjects
from krypton.edge.leaf import LeafServer
from krypton.testing.servers import NatsServer, free_port, start_nats

BOX_A, BOX_B = "010000001", "020000002"
PASSWORDS = {BOX_A: "secret-a", BOX_B: "secret-b"}


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail("condition not reached")


async def _leaf_links(leaf: LeafServer) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{leaf.monitor_url}/leafz")
    return int(response.json().get("leafnodes") or 0)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, int, Path]]:
    leaf_port = free_port()
    log = tmp_path / "hub.log"
    config = f'log_file: "{log}"\n' + edge_leaf_authorization(PASSWORDS)
    server = await asyncio.to_thread(
        start_nats, tmp_path / "hub", None, config, leafnode_port=leaf_port
    )
    try:
        yield server, leaf_port, log
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def box_a(
    hub: tuple[NatsServer, int, Path], tmp_path: Path
) -> AsyncIterator[tuple[Client, Client]]:
    """Box A linked to the hub with its password: a client on the hub, a client on the box."""
    server, leaf_port, _ = hub
    leaf = LeafServer(
        tmp_path / "leaf", BOX_A, f"nats-leaf://127.0.0.1:{leaf_port}", password=PASSWORDS[BOX_A]
    )
    await asyncio.to_thread(leaf.start)
    hub_nc = await nats.connect(server.url)
    box_nc = await nats.connect(leaf.url)
    try:

        async def linked() -> bool:
            return await _leaf_links(leaf) == 1

        await _until(linked)
        yield hub_nc, box_nc
    finally:
        await box_nc.close()
        await hub_nc.close()
        await asyncio.to_thread(leaf.stop)


@pytest.mark.parametrize(
    ("password", "refused_as"),
    [("wrong", f"edge-{BOX_A}"), (None, "local"), (PASSWORDS[BOX_B], f"edge-{BOX_A}")],
    ids=["wrong-password", "no-credentials", "another-box-password"],
)
async def test_a_leaf_without_its_credentials_never_links(
    hub: tuple[NatsServer, int, Path], tmp_path: Path, password: str | None, refused_as: str
) -> None:
    _, leaf_port, log = hub
    leaf = LeafServer(
        tmp_path / "leaf", BOX_A, f"nats-leaf://127.0.0.1:{leaf_port}", password=password
    )
    await asyncio.to_thread(leaf.start)
    try:
        # The hub refused it (twice: it retried once a second and was refused again) ...
        needle = f'authentication error - User "{refused_as}"'

        async def refused_twice() -> bool:
            return log.exists() and log.read_text().count(needle) >= 2

        await _until(refused_twice)
        # ... and the link never came up.
        assert await _leaf_links(leaf) == 0
    finally:
        await asyncio.to_thread(leaf.stop)


async def test_a_linked_box_can_send_only_replies_to_the_forwarder(
    box_a: tuple[Client, Client],
) -> None:
    hub_nc, box_nc = box_a
    got: list[str] = []

    async def record(msg: Msg) -> None:
        got.append(msg.subject)

    canary = f"{inbox_prefix(EDGE_FORWARDER)}.canary"
    forbidden = [
        subjects.ingest_received(BOX_A),
        subjects.ingest_received(BOX_B),
        f"{subjects.AUDIT_EVENT}.x",
        "$JS.API.STREAM.INFO.KRYPTON_INGEST",
        f"$JS.{subjects.edge_domain(BOX_B)}.API.STREAM.INFO.{subjects.EDGE_STREAM}",
        f"$JS.ACK.{subjects.EDGE_STREAM}.region.1.1.1.1.0",
        "_INBOX.krypton.gateway.x",
    ]
    for subject in [*forbidden, canary]:
        await hub_nc.subscribe(subject, cb=record)
    await hub_nc.flush()

    # The hub's interest has to reach the box before its publishes are forwarded: wait
    # until the canary itself crosses.
    async def canary_crossed() -> bool:
        await box_nc.publish(canary, b"ping")
        await box_nc.flush()
        await asyncio.sleep(0.2)
        return canary in got

    await _until(canary_crossed)
    got.clear()
    for subject in forbidden:
        await box_nc.publish(subject, b"forged")
    await box_nc.publish(canary, b"last")  # in order on the leaf link: after the others
    await box_nc.flush()

    async def last_arrived() -> bool:
        return canary in got

    await _until(last_arrived)
    # The hub never even tells the box it has listeners there (it does not propagate
    # interest outside the box's publish permissions), so nothing forged crosses.
    assert got == [canary]


async def test_a_box_receives_only_its_own_domain_requests_and_acks(
    box_a: tuple[Client, Client],
) -> None:
    hub_nc, box_nc = box_a
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    # A listener on the box for B's domain and for the region's own subjects gets nothing
    # the region publishes there; its own domain's API does come across.
    own = f"$JS.{subjects.edge_domain(BOX_A)}.API.canary"
    for subject in (
        f"$JS.{subjects.edge_domain(BOX_B)}.API.>",
        f"{subjects.INGEST_RECEIVED}.>",
        "$JS.ACK.>",
        own,
    ):
        await box_nc.subscribe(subject, cb=record)
    await box_nc.flush()

    async def own_crossed() -> bool:
        await hub_nc.publish(own, b"ping")
        await hub_nc.flush()
        await asyncio.sleep(0.2)
        return own in seen

    await _until(own_crossed)
    seen.clear()
    await hub_nc.publish(f"$JS.{subjects.edge_domain(BOX_B)}.API.STREAM.INFO.X", b"")
    await hub_nc.publish(subjects.ingest_received(BOX_A), b"{}")
    # The region's acks of box B's messages: the box's stream has the same name, but
    # the durable is B's, so they do not reach A (which would remove its own messages).
    ack_b = f"$JS.ACK.{subjects.EDGE_STREAM}.{edge_leaf_durable(BOX_B)}.1.1.1.1.0"
    await hub_nc.publish(ack_b, b"")
    own_ack = f"$JS.ACK.{subjects.EDGE_STREAM}.{edge_leaf_durable(BOX_A)}.1.1.1.1.0"
    await hub_nc.publish(own_ack, b"")
    await hub_nc.publish(own, b"last")
    await hub_nc.flush()

    async def last_arrived() -> bool:
        return own in seen

    await _until(last_arrived)
    assert seen == [own_ack, own]


async def test_the_box_users_join_the_per_service_users(tmp_path: Path) -> None:
    # The platform under production permissions (`nats_auth`): one authorization block holds
    # both the services' users and the boxes'.
    leaf_port = free_port()
    config = nats_authorization(
        {name: f"pw-{name}" for name in PERMISSIONS}, edge_leaf_users(PASSWORDS)
    )
    server = await asyncio.to_thread(
        start_nats, tmp_path / "hub", None, config, leafnode_port=leaf_port
    )
    leaf = LeafServer(
        tmp_path / "leaf", BOX_B, f"nats-leaf://127.0.0.1:{leaf_port}", password=PASSWORDS[BOX_B]
    )
    await asyncio.to_thread(leaf.start)
    try:

        async def linked() -> bool:
            return await _leaf_links(leaf) == 1

        await _until(linked)
    finally:
        await asyncio.to_thread(leaf.stop)
        await asyncio.to_thread(server.stop)


async def test_a_service_password_cannot_open_a_leaf_link(tmp_path: Path) -> None:
    # Service users are for ordinary client connections only: holding the ingest password must
    # not let anyone join the region as a leaf (and so publish with ingest's rights).
    leaf_port = free_port()
    log = tmp_path / "hub.log"
    config = f'log_file: "{log}"\n' + nats_authorization(
        {name: f"pw-{name}" for name in PERMISSIONS}, edge_leaf_users(PASSWORDS)
    )
    server = await asyncio.to_thread(
        start_nats, tmp_path / "hub", None, config, leafnode_port=leaf_port
    )
    leaf = LeafServer(
        tmp_path / "leaf", BOX_A, f"nats-leaf://ingest:pw-ingest@127.0.0.1:{leaf_port}"
    )
    await asyncio.to_thread(leaf.start)
    try:

        async def refused_twice() -> bool:
            return log.exists() and log.read_text().count('User "ingest"') >= 2

        await _until(refused_twice)
        assert await _leaf_links(leaf) == 0
    finally:
        await asyncio.to_thread(leaf.stop)
        await asyncio.to_thread(server.stop)

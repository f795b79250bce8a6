"""The region's forwarder against real nats-servers: a hub and a box's leaf, linked."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from krypton.bus import streams
from krypton.bus.permissions import EDGE_FORWARDER, edge_leaf_authorization, inbox_prefix
from krypton.contracts import subjects
from krypton.contracts.edge.v1 import EdgeChunkHeaders
from krypton.contracts.ingest.v1 import IngestReceived
from krypton.edge.forward import chunk_headers
from krypton.edge.leaf import LeafServer
from krypton.edge.region import BoxForwarder, forwarded_bucket
from krypton.edge.spool import SpoolEntry
from krypton.storage.fs import FileSystemStore
from krypton.testing.servers import NatsServer, free_port, start_nats

STRUCTURE = "010000001"


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, LeafServer]]:
    leaf_port = free_port()
    # The hub's leaf node listener as deployed: the box logs in and is confined to forwarding.
    auth = edge_leaf_authorization({STRUCTURE: "box-secret"})
    hub = await asyncio.to_thread(start_nats, tmp_path / "hub", None, auth, leafnode_port=leaf_port)
    leaf = LeafServer(
        tmp_path / "leaf", STRUCTURE, f"nats-leaf://127.0.0.1:{leaf_port}", password="box-secret"
    )
    await asyncio.to_thread(leaf.start)
    try:
        yield hub, leaf
    finally:
        await asyncio.to_thread(leaf.stop)
        await asyncio.to_thread(hub.stop)


async def _box_stream(nc: Client) -> None:
    await streams.provision(nc.jetstream(), (streams.EDGE,))


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail("condition not reached")


@contextlib.asynccontextmanager
async def _running(forwarder: BoxForwarder) -> AsyncIterator[None]:
    """The forwarder's loop for the duration of the block."""
    task = asyncio.create_task(forwarder.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until_box_drained(box_js: JetStreamContext) -> None:
    async def drained() -> bool:
        info = await box_js.stream_info(subjects.EDGE_STREAM)
        return bool(info.state.messages == 0)

    await _until(drained)


async def test_chunks_out_of_order_and_repeated_become_one_ingest_announcement(
    linked: tuple[NatsServer, LeafServer], tmp_path: Path
) -> None:
    hub, leaf = linked
    box_nc = await nats.connect(leaf.url)
    hub_nc = await nats.connect(hub.url, inbox_prefix=inbox_prefix(EDGE_FORWARDER))
    store = FileSystemStore(tmp_path / "objects")
    try:
        await _box_stream(box_nc)
        data = bytes(range(256)) * 40  # 10 240 bytes in 4 chunks of 3 000
        sha = hashlib.sha256(data).hexdigest()
        entry = SpoolEntry(
            tmp_path / "x.dcm", f"{time.time_ns():020d}-000001", "1.2.3", sha, len(data)
        )
        chunks = [data[i : i + 3000] for i in range(0, len(data), 3000)]
        # As a box that crashed mid-instance would leave them: 0 and 1, then everything again
        # (JetStream de-duplicates the repeats by Nats-Msg-Id), here in another order.
        box_js = box_nc.jetstream()
        for index in (0, 1, 3, 2, 0, 1):
            await box_js.publish(
                subjects.edge_instance(STRUCTURE),
                chunks[index],
                headers=chunk_headers(entry, index, len(chunks)),
            )
        forwarder = BoxForwarder(hub_nc, store, STRUCTURE, batch=8)
        async with _running(forwarder):
            hub_js = hub_nc.jetstream()

            async def announced() -> bool:
                with contextlib.suppress(Exception):
                    info = await hub_js.stream_info(subjects.INGEST_STREAM)
                    return bool(info.state.messages == 1)
                return False

            await _until(announced)
            await _until_box_drained(box_js)
        msg = await hub_js.get_last_msg(subjects.INGEST_STREAM, f"{subjects.INGEST_RECEIVED}.>")
        event = msgspec.json.decode(msg.data, type=IngestReceived)
        # The structure is the one configured for the box's domain, whatever a message says.
        assert event.structure == STRUCTURE
        assert msg.subject == subjects.ingest_received(STRUCTURE)
        assert event.actor.structure == STRUCTURE
        assert (event.sha256, event.size) == (sha, len(data))
        assert await store.read(event.staging_key) == data
        assert forwarder.forwarded_total == 1
    finally:
        await box_nc.close()
        await hub_nc.close()


async def test_a_malformed_chunk_is_dropped_not_retried(
    linked: tuple[NatsServer, LeafServer], tmp_path: Path
) -> None:
    hub, leaf = linked
    box_nc = await nats.connect(leaf.url)
    hub_nc = await nats.connect(hub.url, inbox_prefix=inbox_prefix(EDGE_FORWARDER))
    try:
        await _box_stream(box_nc)
        box_js = box_nc.jetstream()
        await box_js.publish(
            subjects.edge_instance(STRUCTURE), b"x", headers={EdgeChunkHeaders.INDEX: "7"}
        )
        forwarder = BoxForwarder(hub_nc, FileSystemStore(tmp_path / "o"), STRUCTURE)
        async with _running(forwarder):
            await _until_box_drained(box_js)
        assert forwarder.forwarded_total == 0
    finally:
        await box_nc.close()
        await hub_nc.close()


async def test_a_chunk_redelivered_after_its_instance_was_forwarded_is_acked(
    linked: tuple[NatsServer, LeafServer], tmp_path: Path
) -> None:
    hub, leaf = linked
    box_nc = await nats.connect(leaf.url)
    hub_nc = await nats.connect(hub.url, inbox_prefix=inbox_prefix(EDGE_FORWARDER))
    try:
        await _box_stream(box_nc)
        data = b"y" * 100
        sha = hashlib.sha256(data).hexdigest()
        entry = SpoolEntry(tmp_path / "y.dcm", f"{time.time_ns():020d}-000002", "1.2.4", sha, 100)
        # The region forwarded this instance earlier, but the ack of its second chunk was lost
        # with the link: only that chunk is left on the box, and it comes back again and again.
        forwarder = BoxForwarder(hub_nc, FileSystemStore(tmp_path / "o"), STRUCTURE, ack_wait=1.0)
        kv = await forwarded_bucket(hub_nc.jetstream())
        await kv.put(f"{STRUCTURE}.{sha}", b"1")
        box_js = box_nc.jetstream()
        await box_js.publish(
            subjects.edge_instance(STRUCTURE), data[50:], headers=chunk_headers(entry, 1, 2)
        )
        async with _running(forwarder):
            await _until_box_drained(box_js)
        assert forwarder.forwarded_total == 0
    finally:
        await box_nc.close()
        await hub_nc.close()

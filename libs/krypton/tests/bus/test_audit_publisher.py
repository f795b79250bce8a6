"""AuditPublisher against a real nats-server: durable, deduplicated, fail closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from krypton.bus import streams
from krypton.bus.audit import AuditPublisher, AuditUnavailableError
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AuditEventTypeValues, new_event

pytestmark = [pytest.mark.nats]


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_an_event_is_stored_once_with_its_id_as_message_id(nc: Client) -> None:
    js = nc.jetstream()
    await streams.provision(js, (streams.AUDIT,))
    event = new_event(AuditEventTypeValues.AUTH_FAILURE, None, reason="bad token")
    publisher = AuditPublisher(js)
    before = (await js.stream_info(subjects.AUDIT_STREAM)).state.messages
    await publisher.publish(event)
    await publisher.publish(event)  # a retry is stored once
    info = await js.stream_info(subjects.AUDIT_STREAM)
    assert info.state.messages == before + 1
    msg = await js.get_last_msg(subjects.AUDIT_STREAM, "krypton.v1.audit.event.auth.failure")
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == event.event_id


async def test_publishing_without_the_audit_stream_raises(nc: Client) -> None:
    js = nc.jetstream()
    await streams.provision(js, (streams.AUDIT,))
    await js.delete_stream(subjects.AUDIT_STREAM)
    try:
        with pytest.raises(AuditUnavailableError):
            await AuditPublisher(js, timeout=0.5).publish(
                new_event(AuditEventTypeValues.SEARCH, None)
            )
    finally:
        await streams.provision(js, (streams.AUDIT,))

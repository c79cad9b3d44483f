"""Failures between us and S3 (through the fault proxy, on moto and SeaweedFS): an append whose outcome is unknown
lands exactly once."""

from __future__ import annotations as _annotations

from collections.abc import Iterator

import pytest
from conftest import Bucket
from pydantic_ai_harness.memory import MemoryOperation
from scripts import event, snapshot

from pydantic_ai_harness_s3 import ClientSettings
from pydantic_ai_harness_s3.step_store import SEGMENT_ENTRIES
from tests.support.fault_proxy import Fault, FaultProxy, fault_proxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def proxy(s3: Bucket) -> Iterator[FaultProxy]:
    with fault_proxy(s3.endpoint.url) as running:
        yield running


def through(proxy: FaultProxy) -> ClientSettings:
    return ClientSettings(endpoint_url=proxy.url, read_timeout=5.0)


async def test_appends_whose_response_is_lost_land_once(s3: Bucket, proxy: FaultProxy) -> None:
    """The head PUT reaches S3 but the client sees a 500 or a dropped connection: the retry must not append again.

    Unkeyed events have no idempotency key to fall back on: only recognising its own write prevents a duplicate.
    """
    store = s3.step_store(client_settings=through(proxy))
    head = r'/agents/steps/r/head\.json'
    for index in range(SEGMENT_ENTRIES + 8):
        if index % 3 == 0:
            proxy.inject(Fault(status=500, forward=True, method='PUT', path=head))
        elif index % 3 == 1:
            proxy.inject(Fault(drop=True, forward=True, method='PUT', path=head))
        await store.append_event(event('r', index))
    assert proxy.counters['forward+500 InternalError'] > 0 and proxy.counters['forward+drop'] > 0
    events = await s3.step_store().list_events(run_id='r')
    assert [e.metadata['i'] for e in events] == [str(i) for i in range(SEGMENT_ENTRIES + 8)]


async def test_a_snapshot_save_and_a_seal_whose_responses_are_lost_land_once(s3: Bucket, proxy: FaultProxy) -> None:
    store = s3.step_store(client_settings=through(proxy))
    proxy.inject(
        Fault(status=503, forward=True, method='PUT', path=r'/snapshots/'),
        Fault(status=500, forward=True, method='PUT', path=r'/log/00000000\.json'),
    )
    await store.save_snapshot(snapshot('r', 2, key=None))  # unkeyed: must still be stored once
    for index in range(SEGMENT_ENTRIES):
        await store.append_event(event('r', index))
    assert proxy.counters['forward+503 SlowDown'] == 1 and proxy.counters['forward+500 InternalError'] == 1
    reader = s3.step_store()
    assert len(await reader.list_snapshots(run_id='r')) == 1
    assert len(await reader.list_events(run_id='r')) == SEGMENT_ENTRIES
    assert 'agents/steps/r/log/00000000.json' in await s3.keys()


async def test_a_memory_write_whose_response_is_lost_is_not_taken_for_a_replay(s3: Bucket, proxy: FaultProxy) -> None:
    store = s3.memory_store(client_settings=through(proxy))
    proxy.inject(Fault(status=500, forward=True, method='PUT', path=r'/memory/files/'))
    op = MemoryOperation(id='op', fingerprint='fp')
    written = await store.write('a.md', 'x', expected_version=None, operation=op)
    assert (written.replayed, written.existed) == (False, False)  # its own write, recognised: not a replay
    stored = await s3.memory_store().read('a.md', max_chars=10)
    assert stored is not None and stored.version == written.version


async def test_random_transient_failures_lose_and_duplicate_nothing(s3: Bucket, proxy: FaultProxy) -> None:
    proxy.random_faults(0.25, seed=7, faults=(Fault(status=503), Fault(status=500, forward=True)))
    store = s3.step_store(client_settings=through(proxy))
    for index in range(2 * SEGMENT_ENTRIES + 5):
        await store.append_event(event('r', index, key=f'{index}:0:model_request_started:'))
        if index % 10 == 0:
            await store.save_snapshot(snapshot('r', index + 1, key=f'{index}:{index}:complete'))
    proxy.random_faults(0)
    assert sum(1 for x in proxy.log if x.injected) > 10
    reader = s3.step_store()
    assert [e.metadata['i'] for e in await reader.list_events(run_id='r')] == [
        str(i) for i in range(2 * SEGMENT_ENTRIES + 5)
    ]
    latest = await reader.latest_snapshot(run_id='r')
    saved = [f'{i}:{i}:complete' for i in range(0, 2 * SEGMENT_ENTRIES + 5, 10)]
    assert latest is not None and latest.idempotency_key == saved[-1]
    assert [s.idempotency_key for s in await reader.list_snapshots(run_id='r')] == saved

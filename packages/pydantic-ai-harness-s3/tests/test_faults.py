"""Failures between us and S3 (through the fault proxy, on moto and SeaweedFS): an append whose outcome is unknown
lands exactly once."""

from __future__ import annotations as _annotations

from collections.abc import Iterator

import pytest
from conftest import Bucket
from pydantic_ai_harness.memory import MemoryOperation
from scripts import event, snapshot

from pydantic_ai_harness_s3 import ClientSettings, RetryPolicy
from pydantic_ai_harness_s3.memory_store import RECEIPTS_PER_FILE
from pydantic_ai_harness_s3.step_store import SEGMENT_ENTRIES
from pydantic_s3_cas import RetriesExhaustedError
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


@pytest.mark.parametrize('lost', ['applied receipt PUT', 'tombstone DELETE'])
async def test_a_delete_cut_short_leaves_a_listed_tombstone_that_its_replay_removes(
    s3: Bucket, proxy: FaultProxy, lost: str
) -> None:
    """A delete whose later requests never reach S3 (as when its process dies) leaves the tombstone it wrote.

    `read` and `search` skip it; `list_paths`, one listing, still shows the path. Replaying the delete (same
    operation, as a retried agent step does) returns the original result and removes the tombstone.
    """
    writer = s3.memory_store()
    created = await writer.write('u/a.md', 'hello world', expected_version=None)
    if lost == 'applied receipt PUT':
        proxy.inject(Fault(status=503, method='PUT', path=r'/memory/applied/', times=None))
    else:
        proxy.inject(Fault(status=503, method='DELETE', path=r'/memory/files/', times=None))
    cut_short = s3.memory_store(client_settings=through(proxy), retry=RetryPolicy(max_attempts=1))
    op = MemoryOperation(id='delete-1', fingerprint='fp')
    with pytest.raises(RetriesExhaustedError):
        await cut_short.delete('u/a.md', expected_version=created.version, operation=op)
    proxy.clear()

    after_crash = s3.memory_store()
    assert await after_crash.read('u/a.md', max_chars=100) is None
    assert await after_crash.list_paths('u/', limit=10) == ['u/a.md']  # the tombstone, listed
    found = await after_crash.search('u/', 'hello', limit=5, max_files=5, max_chars=100, max_file_chars=100)
    assert found.matches == []
    answered = await after_crash.get_operation(op)  # from the tombstone's receipt, or from `applied/`
    assert answered is not None and (answered.version, answered.existed) == (None, True)

    replay = await after_crash.delete('u/a.md', expected_version=created.version, operation=op)
    assert (replay.version, replay.replayed, replay.existed) == (None, True, True)
    assert await after_crash.list_paths('u/', limit=10) == []
    assert await s3.keys('memory/files/') == []
    again = await after_crash.get_operation(op)
    assert again is not None and again.existed


async def test_a_writer_that_died_after_its_write_is_replayed_after_many_more_writes(
    s3: Bucket, proxy: FaultProxy
) -> None:
    """The file PUT lands, and its writer never sends another request (as when it is killed then). More writes to
    the file than it keeps receipts of follow, each with its own operation; the replay still returns the first
    result, and `get_operation` answers, both right after the crash and after the receipt left the file."""
    dying = s3.memory_store(client_settings=through(proxy), retry=RetryPolicy(max_attempts=1))
    proxy.inject(Fault(status=503, forward=True, method='PUT', path=r'/memory/files/'))
    op = MemoryOperation(id='op-died', fingerprint='fp')
    with pytest.raises(RetriesExhaustedError):
        await dying.write('notes.md', 'first', expected_version=None, operation=op)
    assert proxy.counters['forward+503 SlowDown'] == 1
    others = s3.memory_store()
    landed = await others.read('notes.md', max_chars=100)
    assert landed is not None and landed.content == 'first'
    answered = await others.get_operation(op)
    assert answered is not None and (answered.version, answered.existed) == (landed.version, False)

    version: str | None = landed.version
    for n in range(max(RECEIPTS_PER_FILE, 64) + 6):  # 64: the window of 0.1, which this outran
        written = await others.write(
            'notes.md', f'later {n}', expected_version=version, operation=MemoryOperation(f'later-{n}', 'fp')
        )
        version = written.version

    replay = await s3.memory_store().write('notes.md', 'first', expected_version=None, operation=op)
    assert (replay.version, replay.replayed, replay.existed) == (landed.version, True, False)
    answered = await s3.memory_store().get_operation(op)
    assert answered is not None and answered.version == landed.version
    current = await others.read('notes.md', max_chars=100)
    assert current is not None and current.version == version  # the replay changed nothing

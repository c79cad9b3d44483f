"""S3StepStore: the harness StepStore contract, differentially against the harness's own stores, and its costs."""

from __future__ import annotations as _annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Bucket
from pydantic_ai_harness.step_persistence import (
    FileStepStore,
    InMemoryStepStore,
    RunRecord,
    StepStore,
    ToolEffectRecord,
)
from scripts import at, event, snapshot

from pydantic_ai_harness_s3 import RunAlreadyRegisteredError, S3StepStore
from pydantic_ai_harness_s3._head import KEY_WINDOW, MARKED_RECENTLY, SEGMENT_ENTRIES, _Lookup
from pydantic_s3_cas import CorruptObjectError, S3PersistenceError

pytestmark = pytest.mark.anyio


def test_is_a_step_store_with_list_snapshots() -> None:
    store = S3StepStore(bucket='my-bucket')
    assert isinstance(store, StepStore)
    assert callable(store.list_snapshots)


@pytest.mark.parametrize('prefix', ['runs', 'a/b', '/x/y'])
def test_prefix_must_be_empty_or_end_with_slash(prefix: str) -> None:
    with pytest.raises(ValueError, match='must be empty or end with "/"'):
        S3StepStore(bucket='my-bucket', prefix=prefix)
    S3StepStore(bucket='my-bucket', prefix=prefix.rstrip('/') + '/')


def run(run_id: str, seconds: float, **fields: Any) -> RunRecord:
    return RunRecord(run_id=run_id, started_at=at(seconds), registration_id=f'reg-{run_id}', **fields)


def script() -> list[tuple[str, Any]]:
    """A run's life with every kind of write the harness makes, retries and duplicates included."""
    ops: list[tuple[str, Any]] = [
        ('register_run', run('r2', 20, conversation_id='c1', parent_run_id='r1')),
        ('register_run', run('r1', 10, conversation_id='c1')),
        ('register_run', run('r3', 5, conversation_id='c2', parent_run_id='r1', metadata={'k': 'v'})),
    ]
    for i in range(2 * SEGMENT_ENTRIES + 7):  # crosses two segment boundaries
        ops.append(('append_event', event('r1', i, key=f'{i}:0:model_request_started:')))
        if i % 5 == 0:  # a retried append: stored once
            ops.append(('append_event', event('r1', i, key=f'{i}:0:model_request_started:')))
        if i % 9 == 0:  # unkeyed events are never deduplicated
            ops.append(('append_event', event('r1', 1000 + i)))
            ops.append(('append_event', event('r1', 1000 + i)))
        if i % 11 == 0:
            ops.append(('save_snapshot', snapshot('r1', i // 11 + 1, key=f'{i}:{i}:complete')))
            ops.append(('save_snapshot', snapshot('r1', i // 11 + 1, key=f'{i}:{i}:complete')))  # retried
        if i % 13 == 0:
            ops.append(('save_snapshot', snapshot('r1', 9, key=f'{i}:{i}:interrupted', state='interrupted')))
    ops += [
        ('save_snapshot', snapshot('r1', 2, key='0:0:complete')),  # an older key: already saved
        ('save_snapshot', snapshot('r1', 3, key='custom-key')),
        ('save_snapshot', snapshot('r1', 3, key='custom-key')),
        ('save_snapshot', snapshot('r1', 4, key=None)),
        ('save_snapshot', snapshot('r1', 4, key=None)),
        ('save_snapshot', snapshot('r2', 1, key='0:0:interrupted', state='interrupted')),
        ('append_event', event('r2', 1, key='k')),
        ('append_event', event('r2', 2, key='k')),
        ('record_tool_effect', ToolEffectRecord(tool_call_id='t1', tool_name='f', run_id='r1', status='started')),
        ('record_tool_effect', ToolEffectRecord(tool_call_id='t2', tool_name='g', run_id='r1', status='started')),
        ('record_tool_effect', ToolEffectRecord(tool_call_id='t/3', tool_name='g', run_id='r1', status='started')),
        (
            'record_tool_effect',
            ToolEffectRecord(
                tool_call_id='t1',
                tool_name='f',
                run_id='r1',
                status='completed',
                started_at=at(1),
                ended_at=at(2),
                effect_summary='done',
            ),
        ),
        ('record_tool_effect', ToolEffectRecord(tool_call_id='t2', tool_name='g', run_id='r1', status='failed')),
    ]
    return ops


async def answers(store: Any, run_ids: list[str], *, full: bool) -> dict[str, Any]:
    """Every question a caller can ask the store, as comparable values."""
    result: dict[str, Any] = {}
    for run_id in run_ids:
        result[f'latest {run_id}'] = await store.latest_snapshot(run_id=run_id)
        result[f'latest* {run_id}'] = await store.latest_snapshot(run_id=run_id, include_interrupted=True)
        if not full:
            continue
        result[f'events {run_id}'] = await store.list_events(run_id=run_id)
        result[f'snapshots {run_id}'] = await store.list_snapshots(run_id=run_id)
        result[f'snapshots* {run_id}'] = await store.list_snapshots(run_id=run_id, include_interrupted=True)
        result[f'run {run_id}'] = await store.get_run(run_id=run_id)
        unresolved = await store.list_unresolved_tool_effects(run_id=run_id)
        result[f'unresolved {run_id}'] = sorted(unresolved, key=lambda r: r.tool_call_id)
        for call in ['t1', 't2', 't/3', 'nope']:
            result[f'effect {run_id} {call}'] = await store.get_tool_effect(run_id=run_id, tool_call_id=call)
    if full:
        result['runs'] = await store.list_runs()
        result['runs c1'] = await store.list_runs(conversation_id='c1')
        result['runs p r1'] = await store.list_runs(parent_run_id='r1')
        result['runs c1 p r1'] = await store.list_runs(conversation_id='c1', parent_run_id='r1')
    return result


async def test_differential_against_in_memory_and_file_stores(s3: Bucket, tmp_path: Path) -> None:
    """The same script through the harness's InMemoryStepStore, FileStepStore and S3StepStore: same answers."""
    stores: dict[str, Any] = {
        'memory': InMemoryStepStore(),
        'file': FileStepStore(tmp_path, media_store=None),
        's3': s3.step_store(),
    }
    run_ids = ['r1', 'r2', 'r3', 'unknown']
    for number, (method, argument) in enumerate(script()):
        for store in stores.values():
            await getattr(store, method)(argument)
        if number % 10 == 0:
            seen = {name: await answers(store, run_ids, full=number % 40 == 0) for name, store in stores.items()}
            assert seen['s3'] == seen['memory'] == seen['file'], f'after operation {number} ({method})'
    final = {name: await answers(store, run_ids, full=True) for name, store in stores.items()}
    assert final['s3'] == final['memory']
    assert final['s3'] == final['file']
    assert len(final['s3']['events r1']) > 2 * SEGMENT_ENTRIES  # the script did cross segment boundaries
    # A fresh store (another process) reads the same.
    assert await answers(s3.step_store(), run_ids, full=True) == final['s3']


async def test_register_run_is_create_only_and_recognises_a_retried_registration(s3: Bucket) -> None:
    store = s3.step_store()
    record = run('r', 1, conversation_id='c')
    await store.register_run(record)
    await s3.step_store().register_run(record)  # the same registration again, from another process: accepted
    with pytest.raises(RunAlreadyRegisteredError, match="run 'r' is already in the store"):
        await store.register_run(RunRecord(run_id='r', registration_id='other'))
    with pytest.raises(RunAlreadyRegisteredError):
        await store.register_run(RunRecord(run_id='r'))  # no registration id: never taken for a retry
    assert await store.get_run(run_id='r') == record


async def test_a_late_start_never_reopens_a_finished_tool_call(s3: Bucket) -> None:
    store = s3.step_store()
    done = ToolEffectRecord(tool_call_id='t', tool_name='f', run_id='r', status='completed', ended_at=at(3))
    await store.record_tool_effect(done)
    await store.record_tool_effect(ToolEffectRecord(tool_call_id='t', tool_name='f', run_id='r', status='started'))
    assert await store.get_tool_effect(run_id='r', tool_call_id='t') == done
    assert await store.list_unresolved_tool_effects(run_id='r') == []
    failed = ToolEffectRecord(tool_call_id='t', tool_name='f', run_id='r', status='failed', ended_at=at(4))
    await store.record_tool_effect(failed)  # a terminal update still lands (upsert)
    assert await store.get_tool_effect(run_id='r', tool_call_id='t') == failed


async def test_ids_are_escaped_into_keys(s3: Bucket) -> None:
    store = s3.step_store()
    await store.append_event(event('../a/b', 0, key='x'))
    await store.append_event(event('../a', 1, key='x'))
    assert [e.timestamp for e in await store.list_events(run_id='../a/b')] == [at(0)]
    assert [e.timestamp for e in await store.list_events(run_id='../a')] == [at(1)]
    assert all(key.startswith('agents/steps/') for key in await s3.keys())
    with pytest.raises(ValueError, match='run_id must be a non-empty string'):
        await store.list_events(run_id='')


async def test_cost_of_a_step_does_not_grow_with_the_run(s3: Bucket) -> None:
    """Appends and `latest_snapshot` cost the same requests and about the same bytes at any run length."""
    writer = s3.step_store()
    await writer.save_snapshot(snapshot('r', 2, key='s0'))

    async def append_cost(index: int) -> tuple[int, int]:
        before = writer.stats.as_dict()
        await writer.append_event(event('r', index, key=f'{index}:0:model_request_started:'))
        after = writer.stats.as_dict()
        return after['requests'] - before['requests'], after['bytes_sent'] - before['bytes_sent']

    first = [await append_cost(i) for i in range(1, 4)]
    for i in range(4, 100):
        await writer.append_event(event('r', i, key=f'{i}:0:model_request_started:'))
    early = [await append_cost(i) for i in range(100, 100 + SEGMENT_ENTRIES)]  # a full key window from here on
    for i in range(100 + SEGMENT_ENTRIES, 400):
        await writer.append_event(event('r', i, key=f'{i}:0:model_request_started:'))
    late = [await append_cost(i) for i in range(400, 400 + SEGMENT_ENTRIES)]
    # One PUT of the head per append (the writer knows the head's ETag from its previous write), plus the PUT of
    # the segment once per segment, in the same append: the same at event 100 as at event 400.
    assert [requests for requests, _ in first] == [1, 1, 1]
    assert sorted(requests for requests, _ in early) == sorted(requests for requests, _ in late)
    assert sum(requests for requests, _ in late) == SEGMENT_ENTRIES + 1
    # Bytes sent: the head is as large at event 400 as at event 100 (give or take the digits of bigger numbers).
    assert sum(size for _, size in late) <= 1.05 * sum(size for _, size in early)
    reader = s3.step_store()
    latest = await reader.latest_snapshot(run_id='r')
    assert latest is not None and latest.idempotency_key == 's0'
    # The head, the snapshot object, and the one chunk its two-turn history is in.
    assert reader.stats.gets == 3 and reader.stats.requests == 3


async def test_a_missing_segment_is_reported_not_skipped(s3: Bucket) -> None:
    store = s3.step_store()
    for i in range(SEGMENT_ENTRIES + 1):
        await store.append_event(event('r', i, key=str(i)))
    segment = 'agents/steps/r/log/00000000.json'
    assert segment in await s3.keys()
    await s3.raw.delete_object(Bucket=s3.bucket, Key=segment)
    with pytest.raises(S3PersistenceError, match='sealed log segment is missing'):
        await s3.step_store().list_events(run_id='r')


async def test_a_corrupt_head_is_reported_and_left_untouched(s3: Bucket) -> None:
    store = s3.step_store()
    await store.append_event(event('r', 0, key='a'))
    await s3.raw.put_object(Bucket=s3.bucket, Key='agents/steps/r/head.json', Body=b'{"not": "a head"}')
    with pytest.raises(CorruptObjectError):
        await s3.step_store().append_event(event('r', 1, key='b'))
    body = await (await s3.raw.get_object(Bucket=s3.bucket, Key='agents/steps/r/head.json'))['Body'].read()
    assert body == b'{"not": "a head"}'


async def test_a_snapshot_saved_by_two_writers_is_stored_once(s3: Bucket) -> None:
    """A writer whose view of the head is stale uploads, finds the key saved meanwhile, and removes its upload."""
    late, early = s3.step_store(), s3.step_store()
    await late.append_event(event('r', 0, key='a'))  # `late` now holds the head as it was then
    await early.save_snapshot(snapshot('r', 2, key='0:2:complete'))
    await late.save_snapshot(snapshot('r', 2, key='0:2:complete'))
    assert len(await s3.step_store().list_snapshots(run_id='r')) == 1
    assert len(await s3.keys('agents/steps/r/snapshots/')) == 1


CUSTOM_KEYS = 200  # many more than the head's window of KEY_WINDOW keys


def custom_key_script() -> list[tuple[str, Any]]:
    """Custom (non-StepPersistence) keys far past the head's window, then replays of the oldest and of every one."""
    ops: list[tuple[str, Any]] = []
    for i in range(CUSTOM_KEYS):
        ops.append(('append_event', event('r', i, key=f'custom-event-{i}')))
        if i % 2 == 0:
            ops.append(('append_event', event('r', 5000 + i)))  # unkeyed, in between
        if i % 3 == 0:
            ops.append(('save_snapshot', snapshot('r', i % 4 + 1, key=f'custom-snapshot-{i}')))
        ops.append(('append_event', event('r', 10_000 + i, key=f'{i}:0:model_request_started:')))
    for i in [*range(10), *range(0, CUSTOM_KEYS, 7)]:  # the oldest, long out of the window, then a spread
        ops.append(('append_event', event('r', 90_000 + i, key=f'custom-event-{i}')))
        if i % 3 == 0:
            ops.append(('save_snapshot', snapshot('r', 5, key=f'custom-snapshot-{i}')))
    return ops


async def test_custom_keys_past_the_head_window_are_stored_once(s3: Bucket) -> None:
    """Replays of custom keys written hundreds of appends earlier store nothing, as in InMemoryStepStore."""
    memory, store = InMemoryStepStore(), s3.step_store()
    ops = custom_key_script()
    first_replay = next(n for n, (_, arg) in enumerate(ops) if arg.timestamp == at(90_000))
    for method, argument in ops[:first_replay]:
        for each in (memory, store):
            await getattr(each, method)(argument)
    stored_before = await s3.keys('agents/steps/r/')
    markers = await s3.keys('agents/steps/r/keys/')
    # Every custom key that left the window has a marker; StepPersistence's index keys never need one.
    for method in ['append_event', 'save_snapshot']:
        keys = [arg.idempotency_key for m, arg in ops[:first_replay] if m == method and arg.idempotency_key]
        kind = 'events' if method == 'append_event' else 'snapshots'
        left_window = [key for key in keys[:-KEY_WINDOW] if key.startswith('custom-')]
        assert len([m for m in markers if f'/keys/{kind}/' in m]) == len(left_window) > 0
    for method, argument in ops[first_replay:]:
        for each in (memory, store):
            await getattr(each, method)(argument)
    assert await s3.keys('agents/steps/r/') == stored_before  # nothing new stored: no snapshot, no segment
    expected = await answers(memory, ['r'], full=True)
    assert await answers(store, ['r'], full=True) == expected
    assert await answers(s3.step_store(), ['r'], full=True) == expected  # and as a fresh process reads it
    events = await store.list_events(run_id='r')
    assert len(events) == CUSTOM_KEYS * 2 + CUSTOM_KEYS // 2


async def test_a_fresh_store_finds_an_old_custom_key_by_its_marker(s3: Bucket) -> None:
    """Another process, with no cached head, replays a key that only its marker remembers: one GET of it."""
    writer = s3.step_store()
    for i in range(KEY_WINDOW + 5):
        await writer.append_event(event('r', i, key=f'k{i}'))
    replayer = s3.step_store()
    await replayer.append_event(event('r', 0, key='k0'))
    assert (replayer.stats.gets, replayer.stats.puts) == (2, 0)  # the head, the marker; nothing written
    await replayer.append_event(event('r', 1, key='k70'))  # new: no marker to find, so it is appended
    events = await s3.step_store().list_events(run_id='r')
    assert [e.idempotency_key for e in events] == [f'k{i}' for i in range(KEY_WINDOW + 5)] + ['k70']


@pytest.mark.parametrize('marked_meanwhile', [1, MARKED_RECENTLY, MARKED_RECENTLY + 5])
@pytest.mark.parametrize('kind', ['event', 'snapshot'])
async def test_a_key_marked_by_a_racing_writer_after_the_lookup_is_not_stored_again(
    s3: Bucket, kind: str, marked_meanwhile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between our marker lookup and our head update, another writer stores the key and pushes it out of the window.

    The head names the keys it marked recently, so the update sees it; when more were marked than it names, the
    append looks the marker up again.
    """
    ours, theirs = s3.step_store(), s3.step_store()
    await ours.append_event(event('r', 0))  # our head is cached, with no key marked: no marker lookup

    def write(store: Any, key: str, n: int) -> Any:
        if kind == 'event':
            return store.append_event(event('r', n, key=key))
        return store.save_snapshot(snapshot('r', 1, key=key))

    original = ours._look_up
    lookups: list[_Lookup] = []

    async def look_up_then_race(*args: Any) -> _Lookup:
        lookup = await original(*args)
        lookups.append(lookup)
        if len(lookups) == 1:
            await write(theirs, 'raced', 1)
            for n in range(KEY_WINDOW - 1 + marked_meanwhile):
                await write(theirs, f'push-{n}', 2 + n)
        return lookup

    monkeypatch.setattr(ours, '_look_up', look_up_then_race)
    await write(ours, 'raced', 1)
    assert not lookups[0].found
    assert len(lookups) == (2 if marked_meanwhile > MARKED_RECENTLY else 1)  # looked up again only when needed
    reader = s3.step_store()
    if kind == 'event':
        keys = [e.idempotency_key for e in await reader.list_events(run_id='r')]
    else:
        keys = [s.idempotency_key for s in await reader.list_snapshots(run_id='r')]
        assert len(await s3.keys('agents/steps/r/snapshots/')) == len(keys)  # our upload was removed
    assert keys.count('raced') == 1
    assert 'agents/steps/r/keys/' + kind + 's/' in ' '.join(await s3.keys('agents/steps/r/keys/'))

"""S3StepStore's message-once history, snapshot retention, media and run deletion, on moto and SeaweedFS."""

from __future__ import annotations as _annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Bucket
from pydantic_ai.messages import BinaryContent, ModelMessage, ModelMessagesTypeAdapter, ModelRequest, UserPromptPart
from pydantic_ai_harness.media import DiskMediaStore
from pydantic_ai_harness.step_persistence import ContinuableSnapshot, InMemoryStepStore, RunRecord, SnapshotState
from scripts import at, conversation_snapshot, event, snapshot, tool_conversation

from pydantic_ai_harness_s3 import S3StepStore
from pydantic_ai_harness_s3._head import _HEAD, _Head, _SnapshotEntry
from pydantic_ai_harness_s3._history import MAX_CHUNKS
from pydantic_s3_cas import CorruptObjectError

pytestmark = pytest.mark.anyio


def messages_json(messages: list[ModelMessage]) -> bytes:
    return ModelMessagesTypeAdapter.dump_json(messages)


async def cost(store: S3StepStore, call: Any) -> tuple[Any, dict[str, int]]:
    before = store.stats.as_dict()
    result = await call
    after = store.stats.as_dict()
    return result, {name: after[name] - before[name] for name in after}


# --- message-once -------------------------------------------------------------------------------------------------


async def test_a_save_uploads_its_new_messages_and_a_read_its_history(s3: Bucket) -> None:
    """A conversation growing by a 10 KB tool return a step, to step 130. Every save takes at most 4 requests;
    most saves send at most 3 x their new messages + 32 KB, and the run as a whole does too (the few saves that
    merge chunks send more: no layout can bound every save and every read at once, see the README). A fresh
    reader gets at most 2 x the history + 64 KB in at most 12 requests, and reads back the same bytes."""
    writer = s3.step_store()
    sent_total = new_total = over = 0
    for step in range(1, 131):
        new = len(messages_json(tool_conversation(step))) - len(messages_json(tool_conversation(step - 1)))
        _, spent = await cost(writer, writer.save_snapshot(conversation_snapshot('r', step)))
        sent_total, new_total = sent_total + spent['bytes_sent'], new_total + new
        assert spent['requests'] <= 4, (step, spent)
        over += spent['bytes_sent'] > 3 * new + 32_000
    assert sent_total <= 3 * new_total + 32_000 * 130
    assert over <= 20, over  # 14 of 130 merge (the 11th chunk), by the policy in _history.py
    reader = s3.step_store()
    latest, spent = await cost(reader, reader.latest_snapshot(run_id='r'))
    history = messages_json(tool_conversation(130))
    assert latest is not None and messages_json(latest.messages) == history
    assert latest == conversation_snapshot('r', 130)
    assert spent['requests'] <= 2 + MAX_CHUNKS
    assert spent['bytes_received'] <= 2 * len(history) + 64_000


async def test_every_snapshot_reads_back_as_saved_while_chunks_merge(s3: Bucket) -> None:
    """Each of 40 snapshots (several chunk merges) reads back equal, and the run stores each message a few times,
    not once per snapshot."""
    store = s3.step_store()
    for step in range(1, 41):
        await store.save_snapshot(conversation_snapshot('r', step))
    listed = await s3.step_store().list_snapshots(run_id='r')
    assert listed == [conversation_snapshot('r', step) for step in range(1, 41)]
    stored = sum([len(await object_body(s3, key)) for key in await s3.keys('agents/steps/r/chunks/')])
    assert stored <= 5 * len(messages_json(tool_conversation(40)))


async def test_a_rewritten_history_is_stored_as_it_is(s3: Bucket) -> None:
    """A history that does not extend the previous one (a history processor dropped messages) reuses nothing
    it does not reproduce byte for byte."""
    store = s3.step_store()
    await store.save_snapshot(conversation_snapshot('r', 6))
    trimmed = tool_conversation(6)[3:]
    rewritten = ContinuableSnapshot(run_id='r', step_index=7, messages=trimmed, timestamp=at(1), idempotency_key='7:7')
    await store.save_snapshot(rewritten)
    latest = await s3.step_store().latest_snapshot(run_id='r')
    assert latest is not None and messages_json(latest.messages) == messages_json(trimmed)


async def test_a_tampered_chunk_is_refused(s3: Bucket) -> None:
    store = s3.step_store()
    await store.save_snapshot(conversation_snapshot('r', 2))
    [chunk] = await s3.keys('agents/steps/r/chunks/')
    body = await object_body(s3, chunk)
    await s3.raw.put_object(Bucket=s3.bucket, Key=chunk, Body=body.replace(b'page 1', b'page 9'))
    with pytest.raises(CorruptObjectError, match='chunk of the history'):
        await s3.step_store().latest_snapshot(run_id='r')


async def test_snapshots_of_the_inline_layout_stay_readable_and_are_built_on(s3: Bucket) -> None:
    """A run written before message-once storage (whole snapshots inline, `snapshots/{uuid}.json`) reads as before,
    and the next save stores the whole history once in chunks."""
    old = snapshot('r', 3, key='0:0:complete')
    legacy_key = 'agents/steps/r/snapshots/0123456789abcdef0123456789abcdef.json'
    await s3.raw.put_object(Bucket=s3.bucket, Key=legacy_key, Body=json.dumps(old_snapshot_json(old)).encode())
    entry = _SnapshotEntry(seq=0, object=legacy_key.removeprefix('agents/steps/r/'), state='complete')
    head = _Head(next_snapshot=1, open=(entry,), snapshot_keys=('0:0:complete',), latest=entry, latest_complete=entry)
    await s3.raw.put_object(Bucket=s3.bucket, Key='agents/steps/r/head.json', Body=_HEAD.dump_json(head))
    store = s3.step_store()
    assert await store.latest_snapshot(run_id='r') == old
    await store.save_snapshot(snapshot('r', 4, key='1:1:complete'))
    assert await s3.step_store().list_snapshots(run_id='r') == [old, snapshot('r', 4, key='1:1:complete')]


def old_snapshot_json(value: ContinuableSnapshot) -> Any:
    from pydantic_ai_harness_s3._history import LEGACY_SNAPSHOT

    return LEGACY_SNAPSHOT.dump_python(value, mode='json')


async def object_body(s3: Bucket, key: str) -> bytes:
    response = await s3.raw.get_object(Bucket=s3.bucket, Key=key)
    body: bytes = await response['Body'].read()
    return body


async def test_objects_a_save_left_before_its_head_write_are_not_history(s3: Bucket) -> None:
    """A save that died after creating its chunk and snapshot object, before the head: readers never see them."""
    store = s3.step_store()
    await store.save_snapshot(conversation_snapshot('r', 2))
    orphan: Any = s3.step_store()

    async def die_before_the_head(*args: Any) -> bool:
        raise RuntimeError('killed')

    orphan._append = die_before_the_head
    with pytest.raises(RuntimeError):
        await orphan.save_snapshot(conversation_snapshot('r', 3))
    assert await s3.step_store().latest_snapshot(run_id='r') == conversation_snapshot('r', 2)
    await s3.step_store().save_snapshot(conversation_snapshot('r', 3))
    assert await s3.step_store().latest_snapshot(run_id='r') == conversation_snapshot('r', 3)


# --- max_snapshots_per_run ----------------------------------------------------------------------------------------


SAVES: list[list[tuple[int, SnapshotState]]] = [
    [(step, 'complete') for step in range(6)],
    [(0, 'complete'), (1, 'complete'), (2, 'interrupted'), (3, 'interrupted')],
    [(0, 'complete'), (1, 'interrupted')],
    [(0, 'interrupted'), (1, 'interrupted'), (2, 'interrupted')],
    [(0, 'complete'), (1, 'interrupted'), (2, 'complete'), (3, 'interrupted'), (4, 'interrupted'), (5, 'complete')],
]


@pytest.mark.parametrize('keep', [1, 2, 3])
@pytest.mark.parametrize('saves', range(len(SAVES)))
async def test_retention_keeps_what_the_harness_stores_keep(s3: Bucket, keep: int, saves: int) -> None:
    """Against InMemoryStepStore(max_snapshots_per_run=keep): the same snapshots listed and read, and exactly the
    retained snapshots' objects left in the bucket."""
    memory, store = InMemoryStepStore(max_snapshots_per_run=keep), s3.step_store(max_snapshots_per_run=keep)
    for step, state in SAVES[saves]:
        for each in (memory, store):
            await each.save_snapshot(snapshot('r', step + 1, key=f'{step}:{step}:{state}', state=state))
    fresh = s3.step_store(max_snapshots_per_run=keep)
    for interrupted in (False, True):
        expected = await memory.list_snapshots(run_id='r', include_interrupted=interrupted)
        assert await fresh.list_snapshots(run_id='r', include_interrupted=interrupted) == expected
        assert await fresh.latest_snapshot(run_id='r', include_interrupted=interrupted) == await memory.latest_snapshot(
            run_id='r', include_interrupted=interrupted
        )
    retained = await memory.list_snapshots(run_id='r', include_interrupted=True)
    assert len(await s3.keys('agents/steps/r/snapshots/')) == len(retained)


async def test_retention_never_stores_a_pruned_key_again(s3: Bucket) -> None:
    store = s3.step_store(max_snapshots_per_run=1)
    older, newer = snapshot('r', 1, key='0:1:complete'), snapshot('r', 2, key='1:2:complete')
    for each in (older, newer, older):
        await store.save_snapshot(each)
    assert await store.list_snapshots(run_id='r', include_interrupted=True) == [newer]


@pytest.mark.parametrize('bad', [0, -1, 1.5, True])
def test_retention_bound_is_validated_as_the_harness_does(bad: Any) -> None:
    with pytest.raises(ValueError, match='max_snapshots_per_run must be'):
        S3StepStore(bucket='b', max_snapshots_per_run=bad)


async def test_retention_keeps_the_chunks_a_kept_snapshot_needs(s3: Bucket) -> None:
    """With one snapshot kept, 30 saves later the kept one still reads whole, from a fresh store."""
    store = s3.step_store(max_snapshots_per_run=1)
    for step in range(1, 31):
        await store.save_snapshot(conversation_snapshot('r', step))
    assert len(await s3.keys('agents/steps/r/snapshots/')) == 1
    # Any reader lists what the bound kept, with or without a bound of its own; a raised bound keeps more from now.
    assert await s3.step_store().list_snapshots(run_id='r') == [conversation_snapshot('r', 30)]
    raised = s3.step_store(max_snapshots_per_run=3)
    await raised.save_snapshot(conversation_snapshot('r', 31))
    expected = [conversation_snapshot('r', step) for step in (30, 31)]
    assert await s3.step_store().list_snapshots(run_id='r') == expected


# --- media --------------------------------------------------------------------------------------------------------


def with_image(step: int, payload: bytes, run_id: str = 'r') -> ContinuableSnapshot:
    prompt = UserPromptPart(['what is this', BinaryContent(data=payload, media_type='image/png')], timestamp=at(0))
    messages: list[ModelMessage] = [ModelRequest(parts=[prompt]), *tool_conversation(step)[1:]]
    return ContinuableSnapshot(
        run_id=run_id, step_index=step, messages=messages, timestamp=at(step), idempotency_key=None
    )


async def test_media_go_to_the_runs_folder_once(s3: Bucket) -> None:
    payload = bytes(range(256)) * 300  # 76.8 KB: over the default 64 KiB threshold
    store = s3.step_store()
    puts = []
    for step in range(1, 4):
        _, spent = await cost(store, store.save_snapshot(with_image(step, payload)))
        puts.append(spent['bytes_sent'])
    assert len(await s3.keys('agents/steps/r/media/')) == 1
    assert puts[0] > len(payload) > max(puts[1:])  # uploaded by the first save only
    chunks = [await object_body(s3, key) for key in await s3.keys('agents/steps/r/chunks/')]
    assert any(b'media+sha256://' in chunk for chunk in chunks)
    assert not any(base64.b64encode(payload)[:1000] in chunk for chunk in chunks)
    latest = await s3.step_store().latest_snapshot(run_id='r')
    assert latest is not None and messages_json(latest.messages) == messages_json(with_image(3, payload).messages)


async def test_media_below_the_threshold_or_without_a_store_stay_inline(s3: Bucket, tmp_path: Path) -> None:
    payload = b'\xab' * 70_000
    await s3.step_store(media_threshold_bytes=100_000).save_snapshot(with_image(1, payload))
    assert await s3.keys('agents/steps/r/media/') == []
    await s3.step_store(prefix='none/', media_store=None).save_snapshot(with_image(1, payload))
    assert await s3.keys('none/steps/r/media/') == []
    disk = DiskMediaStore(tmp_path / 'media')
    custom = s3.step_store(prefix='disk/', media_store=disk)
    await custom.save_snapshot(with_image(1, payload))
    assert await s3.keys('disk/steps/r/media/') == [] and len(list((tmp_path / 'media').glob('*.bin'))) == 1
    latest = await s3.step_store(prefix='disk/', media_store=disk).latest_snapshot(run_id='r')
    assert latest is not None and messages_json(latest.messages) == messages_json(with_image(1, payload).messages)


# --- deleting runs ------------------------------------------------------------------------------------------------


RUN_IDS = ['a', 'a/b', 'a b', 'ab', 'a%2Fb', '.', '..', 'old', 'new']


async def fill(store: S3StepStore, run_id: str) -> None:
    from pydantic_ai_harness.step_persistence import ToolEffectRecord

    await store.register_run(RunRecord(run_id=run_id, started_at=at(RUN_IDS.index(run_id))))
    for i in range(40):  # a sealed segment
        await store.append_event(event(run_id, i, key=f'custom-{i}' if i % 3 else None))
    await store.save_snapshot(conversation_snapshot(run_id, 2))
    await store.save_snapshot(with_image(2, bytes([len(run_id)]) * 70_000, run_id))
    await store.record_tool_effect(ToolEffectRecord(tool_call_id='t', tool_name='f', run_id=run_id, status='started'))


async def test_delete_run_removes_the_run_and_nothing_of_any_other(s3: Bucket) -> None:
    store = s3.step_store()
    for run_id in RUN_IDS[:7]:
        await fill(store, run_id)
    foreign = 'agents/steps/a/notes.txt'
    await s3.raw.put_object(Bucket=s3.bucket, Key=foreign, Body=b'not ours')
    before = {run_id: await snapshot_of(s3, run_id) for run_id in RUN_IDS[:7]}
    assert await s3.step_store().delete_run('a') is True
    fresh = s3.step_store()
    assert await fresh.get_run(run_id='a') is None and await fresh.latest_snapshot(run_id='a') is None
    assert await fresh.list_events(run_id='a') == []
    assert await s3.keys('agents/steps/a/') == [foreign]  # what it did not write stays
    for run_id in RUN_IDS[1:7]:
        assert await snapshot_of(s3, run_id) == before[run_id]
    assert [r.run_id for r in await fresh.list_runs()] == RUN_IDS[1:7]
    assert await s3.step_store().delete_run('a') is False
    assert await s3.step_store().delete_run('.') is True  # `.` and `..` are levels of their own (%2E, %2E%2E)
    assert await snapshot_of(s3, '..') == before['..']


async def snapshot_of(s3: Bucket, run_id: str) -> Any:
    store = s3.step_store()
    return (
        await store.get_run(run_id=run_id),
        await store.list_events(run_id=run_id),
        await store.list_snapshots(run_id=run_id, include_interrupted=True),
        await store.list_unresolved_tool_effects(run_id=run_id),
    )


async def test_prune_deletes_the_runs_that_ended_before(s3: Bucket) -> None:
    from datetime import UTC, datetime, timedelta

    store = s3.step_store()
    for run_id in ('old', 'new'):
        await fill(store, run_id)
    later = datetime.now(UTC) + timedelta(days=1)
    assert await store.prune(ended_before=later, dry_run=True) == ['old', 'new']
    assert len(await store.list_runs()) == 2
    assert await store.prune(ended_before=datetime.now(UTC) - timedelta(days=1)) == []
    assert await store.prune(ended_before=later) == ['old', 'new']
    assert await store.list_runs() == [] and await s3.keys('agents/') == ['agents/runs-index.json']  # the memo
    with pytest.raises(ValueError, match='timezone-aware'):
        await store.prune(ended_before=datetime(2026, 1, 1))


async def test_aclose_forgets_the_cache(s3: Bucket) -> None:
    async with s3.step_store() as store:
        await store.append_event(event('r', 0))
    assert store._recent == {}
    await store.append_event(event('r', 1))  # still usable: the next call reads afresh
    assert len(await store.list_events(run_id='r')) == 2


# --- list_runs ----------------------------------------------------------------------------------------------------


async def test_list_runs_reads_each_record_once_across_stores(s3: Bucket) -> None:
    """A memo of records keyed by ETag: the first listing reads every record, later ones (from fresh stores too)
    only the new ones, and a deleted run leaves the answer."""
    store = s3.step_store()
    for n in range(12):
        await store.register_run(RunRecord(run_id=f'r{n}', started_at=at(n), conversation_id=f'c{n % 2}'))
    first, spent = await cost(store, store.list_runs())
    assert [r.run_id for r in first] == [f'r{n}' for n in range(12)]
    assert spent['gets'] == 1 + 12 and spent['puts'] == 1  # the memo (missing), each record; the memo written
    fresh = s3.step_store()
    again, spent = await cost(fresh, fresh.list_runs(conversation_id='c1'))
    assert [r.run_id for r in again] == [f'r{n}' for n in range(1, 12, 2)]
    assert (spent['lists'], spent['gets'], spent['puts']) == (1, 1, 0)
    await store.register_run(RunRecord(run_id='late', started_at=at(100)))
    await store.delete_run('r0')
    later, spent = await cost(fresh, fresh.list_runs())
    assert [r.run_id for r in later] == [*(f'r{n}' for n in range(1, 12)), 'late']
    assert (spent['gets'], spent['puts']) == (2, 1)  # the memo and the one new record; the memo rewritten
    await s3.raw.put_object(Bucket=s3.bucket, Key='agents/runs-index.json', Body=b'not a memo')
    assert await s3.step_store().list_runs() == later  # a damaged memo is only a cache miss

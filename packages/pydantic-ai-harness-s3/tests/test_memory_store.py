"""S3MemoryStore beyond the contract suite: receipts that cannot be lost, versions that never come back, races."""

from __future__ import annotations as _annotations

import json

import anyio
import pytest
from conftest import Bucket
from pydantic_ai_harness.memory import (
    MemoryConflictError,
    MemoryOperation,
    MemoryOperationConflictError,
    MemoryStore,
    MetadataMemoryStore,
    SearchableMemoryStore,
)

from pydantic_ai_harness_s3 import S3MemoryStore
from pydantic_ai_harness_s3.memory_store import RECEIPTS_PER_FILE

pytestmark = pytest.mark.anyio


def test_implements_the_harness_protocols() -> None:
    store = S3MemoryStore(bucket='my-bucket', prefix='m/')
    assert isinstance(store, MemoryStore)
    assert isinstance(store, MetadataMemoryStore)
    assert isinstance(store, SearchableMemoryStore)
    with pytest.raises(ValueError, match='must be empty or end with "/"'):
        S3MemoryStore(bucket='my-bucket', prefix='m')


async def test_the_receipt_lands_with_the_change_not_after_it(s3: Bucket) -> None:
    """The receipt is in the file's own body: with nothing written after the change, a replay returns the original.

    Only the intent (`receipts/`) exists besides the file; it names the file, where `get_operation` finds it.
    """
    store = s3.memory_store()
    op = MemoryOperation(id='op-1', fingerprint='fp')
    first = await store.write('u/main/MEMORY.md', 'v1', expected_version=None, operation=op)
    assert sorted(await s3.keys('memory/')) == ['memory/files/u/main/MEMORY.md', 'memory/receipts/op-1.json']
    found = await s3.memory_store().get_operation(op)
    assert found is not None and (found.version, found.replayed, found.existed) == (first.version, True, False)
    replay = await s3.memory_store().write('u/main/MEMORY.md', 'v1', expected_version=None, operation=op)
    assert (replay.version, replay.replayed, replay.existed) == (first.version, True, False)
    stored = await store.read('u/main/MEMORY.md', max_chars=100)
    assert stored is not None and stored.content == 'v1' and stored.operation_id == 'op-1'
    with pytest.raises(MemoryOperationConflictError):
        await store.write(
            'u/main/MEMORY.md', 'v2', expected_version=first.version, operation=MemoryOperation('op-1', 'x')
        )
    with pytest.raises(MemoryOperationConflictError, match='another memory path'):
        await store.write('other.md', 'v1', expected_version=None, operation=op)


async def test_receipts_leave_the_file_for_applied_objects_in_the_same_write(s3: Bucket) -> None:
    """A file keeps its last `RECEIPTS_PER_FILE` receipts; the write that pushes one out creates it under
    `applied/` first, so every operation is still answered, and replayed, however many writes followed."""
    store = s3.memory_store()
    ops = [MemoryOperation(id=f'op-{n}', fingerprint=f'fp-{n}') for n in range(RECEIPTS_PER_FILE + 3)]
    results = []
    version = None
    for n, op in enumerate(ops):
        results.append(await store.write('p.md', f'v{n}', expected_version=version, operation=op))
        version = results[-1].version
    assert sorted(await s3.keys('memory/applied/')) == [f'memory/applied/op-{n}.json' for n in range(3)]
    reader = s3.memory_store()
    for op, result in zip(ops, results, strict=True):
        found = await reader.get_operation(op)
        assert found is not None and (found.version, found.existed) == (result.version, result.existed)
    replay = await reader.write('p.md', 'v0', expected_version=None, operation=ops[0])
    assert (replay.version, replay.replayed) == (results[0].version, True)


async def test_an_operation_that_changed_nothing_is_answered_too(s3: Bucket) -> None:
    store = s3.memory_store()
    op = MemoryOperation(id='del-nothing', fingerprint='fp')
    deleted = await store.delete('missing.md', expected_version=None, operation=op)
    assert (deleted.existed, deleted.replayed) == (False, False)
    found = await s3.memory_store().get_operation(op)
    assert found is not None and (found.existed, found.replayed) == (False, True)


async def test_a_store_of_version_0_1_keeps_answering_its_receipts(s3: Bucket) -> None:
    """0.1 kept each receipt under `receipts/` (where intents go now): those are still read as receipts."""
    store = s3.memory_store()
    written = await store.write('p.md', 'x', expected_version=None)
    receipt = {'operation_id': 'old', 'fingerprint': 'fp', 'path': 'p.md', 'version': written.version, 'existed': False}
    await s3.raw.put_object(Bucket=s3.bucket, Key='memory/receipts/old.json', Body=json.dumps(receipt).encode())
    op = MemoryOperation(id='old', fingerprint='fp')
    found = await store.get_operation(op)
    assert found is not None and (found.version, found.replayed) == (written.version, True)
    replay = await store.write('p.md', 'x', expected_version=None, operation=op)
    assert (replay.version, replay.replayed) == (written.version, True)
    with pytest.raises(MemoryOperationConflictError):
        await store.get_operation(MemoryOperation(id='old', fingerprint='other'))


async def test_a_version_never_comes_back(s3: Bucket) -> None:
    """Versions are stored ids, not ETags: writing earlier content again does not revive an earlier version."""
    store = s3.memory_store()
    v1 = (await store.write('p.md', 'same', expected_version=None)).version
    v2 = (await store.write('p.md', 'other', expected_version=v1)).version
    v3 = (await store.write('p.md', 'same', expected_version=v2)).version
    assert len({v1, v2, v3}) == 3
    with pytest.raises(MemoryConflictError, match=r"memory path 'p\.md' changed"):
        await store.write('p.md', 'lost update', expected_version=v1)
    stored = await store.read('p.md', max_chars=100)
    assert stored is not None and (stored.content, stored.version) == ('same', v3)


async def test_racing_writers_one_wins_the_rest_conflict(s3: Bucket) -> None:
    base = (await s3.memory_store().write('p.md', 'base', expected_version=None)).version
    outcomes: list[str] = []

    async def writer(n: int) -> None:
        try:
            await s3.memory_store().write('p.md', f'writer {n}', expected_version=base)
            outcomes.append(f'writer {n}')
        except MemoryConflictError:
            outcomes.append('conflict')

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(writer, n)
    winners = [o for o in outcomes if o != 'conflict']
    assert len(winners) == 1
    stored = await s3.memory_store().read('p.md', max_chars=100)
    assert stored is not None and stored.content == winners[0]


async def test_one_operation_racing_with_itself_applies_once(s3: Bucket) -> None:
    op = MemoryOperation(id='op-race', fingerprint='fp')
    results = []

    async def attempt() -> None:
        results.append(await s3.memory_store().write('p.md', 'once', expected_version=None, operation=op))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(attempt)
    assert len({r.version for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1


async def test_delete_leaves_nothing_but_its_receipt(s3: Bucket) -> None:
    store = s3.memory_store()
    version = (await store.write('a/b.md', 'x', expected_version=None)).version
    op = MemoryOperation(id='del-1', fingerprint='d')
    deleted = await store.delete('a/b.md', expected_version=version, operation=op)
    assert (deleted.version, deleted.existed, deleted.replayed) == (None, True, False)
    assert await s3.keys('memory/files/') == []
    assert await store.list_paths('a/', limit=10) == []
    replay = await store.delete('a/b.md', expected_version=version, operation=op)
    assert (replay.existed, replay.replayed) == (True, True)
    recreated = await store.write('a/b.md', 'y', expected_version=None)
    assert recreated.existed is False


async def test_metadata_is_replaced_by_each_write(s3: Bucket) -> None:
    store = s3.memory_store()
    v1 = (await store.write_with_metadata('m.md', 'x', expected_version=None, metadata={'by': 'alice'})).version
    stored = await store.read('m.md', max_chars=10)
    assert stored is not None and stored.metadata == {'by': 'alice'}
    await store.write('m.md', 'y', expected_version=v1)
    stored = await store.read('m.md', max_chars=10)
    assert stored is not None and stored.metadata is None


async def test_errors_name_the_path_never_the_content(s3: Bucket) -> None:
    store = s3.memory_store()
    await store.write('secret.md', 'the launch code is 0000', expected_version=None)
    with pytest.raises(MemoryConflictError) as caught:
        await store.write('secret.md', 'the new launch code is 1111', expected_version=None)
    assert 'secret.md' in str(caught.value) and 'launch code' not in str(caught.value)

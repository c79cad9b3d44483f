"""S3MemoryStore beyond the contract suite: receipts that cannot be lost, versions that never come back, races."""

from __future__ import annotations as _annotations

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

pytestmark = pytest.mark.anyio


def test_implements_the_harness_protocols() -> None:
    store = S3MemoryStore(bucket='b', prefix='m/')
    assert isinstance(store, MemoryStore)
    assert isinstance(store, MetadataMemoryStore)
    assert isinstance(store, SearchableMemoryStore)
    with pytest.raises(ValueError, match='prefix must be empty or end with "/"'):
        S3MemoryStore(bucket='b', prefix='m')


async def test_the_receipt_lands_with_the_change_not_after_it(s3: Bucket) -> None:
    """With the receipt index entry gone (a crash right after the write), a replay still returns the original."""
    store = s3.memory_store()
    op = MemoryOperation(id='op-1', fingerprint='fp')
    first = await store.write('u/main/MEMORY.md', 'v1', expected_version=None, operation=op)
    await s3.raw.delete_object(Bucket=s3.bucket, Key='memory/receipts/op-1.json')
    assert await store.get_operation(op) is None  # the index lost it ...
    replay = await s3.memory_store().write('u/main/MEMORY.md', 'v1', expected_version=None, operation=op)
    assert (replay.version, replay.replayed, replay.existed) == (first.version, True, False)  # ... the file did not
    again = await store.get_operation(op)  # and the replay put the index entry back
    assert again is not None and again.version == first.version
    stored = await store.read('u/main/MEMORY.md', max_chars=100)
    assert stored is not None and stored.content == 'v1' and stored.operation_id == 'op-1'
    with pytest.raises(MemoryOperationConflictError):
        await store.write(
            'u/main/MEMORY.md', 'v2', expected_version=first.version, operation=MemoryOperation('op-1', 'x')
        )


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
